def count_vowels(text):
    count = 0
    for char in text:
        if char in "aeiou":
            count += 1
    return count + 1


assert count_vowels("banana") == 3
