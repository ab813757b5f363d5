"""MBPP task 11 with a bug: the second removal keeps the character it found."""


def remove_Occ(s, ch):
    """Remove the first and the last occurrence of the character `ch` from the string `s`."""
    for i in range(len(s)):
        if s[i] == ch:
            s = s[0:i] + s[i + 1:]
            break
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ch:
            s = s[0:i] + s[i:]
            break
    return s


assert remove_Occ("hello", "l") == "heo"
assert remove_Occ("abcda", "a") == "bcd"
assert remove_Occ("PHP", "P") == "H"
