def apply_twice(values, step):
    def bump(x):
        result = x + step
        return result

    out = []
    for value in values:
        out.append(bump(bump(value)) - 1)
    return out


assert apply_twice([1, 2], 3) == [7, 8]
