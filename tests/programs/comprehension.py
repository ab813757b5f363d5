def squares_of_odds(values):
    odds = [v for v in values if v % 2 == 0]
    total = sum({v * v for v in odds})
    return sorted(v * v for v in odds), total


assert squares_of_odds([1, 2, 3]) == ([1, 9], 10)
