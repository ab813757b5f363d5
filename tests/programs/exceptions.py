def safe_ratio(a, b):
    try:
        value = a / b
    except ZeroDivisionError:
        value = None
    scale = 10 // (a - 2)
    return value * scale


assert safe_ratio(2, 1) == 20
