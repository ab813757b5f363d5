"""Pricing rules, tested with pytest in test_pricing.py."""


def bulk_discount(quantity, unit_price):
    """Total price: 10% off from 10 items on, 20% off from 100 items on."""
    total = quantity * unit_price
    if quantity > 100:
        return round(total * 0.8, 2)
    if quantity > 10:
        return round(total * 0.9, 2)
    return total
