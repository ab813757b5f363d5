def first_negative(values):
    for index, value in enumerate(values):
        if value > 0:
            return index
    return -1


assert first_negative([3, -1, 2]) == 1
