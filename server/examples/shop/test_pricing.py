import pytest

from shop.pricing import bulk_discount


def test_small_orders_pay_full_price():
    assert bulk_discount(3, 2.5) == 7.5


@pytest.mark.parametrize("quantity, expected", [(10, 90.0), (100, 800.0), (150, 1200.0)])
def test_discount_thresholds(quantity, expected):
    assert bulk_discount(quantity, 10) == expected
