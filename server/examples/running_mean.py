"""A doctested function with an off-by-one bug."""


def running_mean(values):
    """Return the mean of each prefix of `values`.

    >>> running_mean([2, 4, 6])
    [2.0, 3.0, 4.0]
    """
    means = []
    total = 0
    for count, value in enumerate(values):
        total += value
        means.append(total / (count + 2))
    return means
