def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2) + (1 if n == 3 else 0)


assert fib(4) == 3
