class Loud:
    def __repr__(self):
        raise RuntimeError("no repr for you")


class Slow:
    def __repr__(self):
        while True:
            pass


def odd_values(n):
    items = list(range(n))
    text = "x" * 500
    blob = bytes(range(40))
    loop = []
    loop.append(loop)
    big = 7 ** 5000
    loud = Loud()
    slow = Slow()
    return len(items) + len(text) + len(blob) + len(loop) + (big % 2) + (loud is slow)


assert odd_values(1000) == 0
