"""Coding: Python expressions evaluated for their value, idioms, and small functions whose tests run in the suite."""

from __future__ import annotations

from collections.abc import Callable

from ._base import Rng, answer_easy, answer_hard, draw, pick

WORDS = (
    "banana", "python", "keyboard", "elephant", "mississippi", "notebook", "sunflower", "galaxy", "computer",
    "umbrella", "pineapple", "strawberry", "volcano", "butterfly", "lighthouse", "teapot", "avocado", "marathon",
)  # fmt: skip
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "to be or not to be",
    "practice makes perfect",
    "a journey of a thousand miles begins with a single step",
    "all that glitters is not gold",
    "knowledge is power",
    "better late than never",
    "actions speak louder than words",
)


def _expression(rng: Rng, held: bool) -> tuple[str, str]:
    """A Python expression whose value is computed by evaluating it."""
    kind, params = draw(rng, held, lambda: _expression_params(rng))
    expr, why = _EXPRESSIONS[kind](*params)
    value = eval(
        expr,
        {
            "__builtins__": {
                "sum": sum,
                "range": range,
                "len": len,
                "sorted": sorted,
                "divmod": divmod,
                "max": max,
                "min": min,
            }
        },
    )
    question = rng.choice(
        (
            "What does this Python expression evaluate to?\n`{e}`",
            "In Python, what is the value of `{e}`?",
            "What does Python print for `print(repr({e}))`?",
        )
    )
    return question.format(e=expr), answer_easy(f"`{value!r}`", why.format(value=repr(value)))


def _expression_params(rng: Rng) -> tuple[str, tuple]:
    kind = rng.choice(sorted(_EXPRESSIONS))
    word, sentence = rng.choice(WORDS), rng.choice(SENTENCES)
    numbers = tuple(rng.int(-9, 30) for _ in range(rng.int(4, 6)))
    params = {
        "slice": (word, rng.int(0, 3), rng.int(4, len(word))),
        "range_sum": (rng.int(0, 10), rng.int(11, 30)),
        "divmod": (rng.int(20, 200), rng.int(3, 12)),
        "comprehension": (rng.int(2, 5), rng.int(4, 8)),
        "filter": (rng.int(2, 4), rng.int(8, 16)),
        "split": (sentence,),
        "count": (word, rng.choice(sorted(set(word)))),
        "reverse": (word,),
        "sorted": (numbers,),
        "spread": (numbers,),
        "division": (rng.int(7, 60), rng.choice((2, 4, 5, 8))),
    }[kind]
    return kind, params


def _x_slice(word: str, i: int, j: int) -> tuple[str, str]:
    return (
        f'"{word}"[{i}:{j}]',
        f"Slicing takes the characters from index {i} up to, but not including, index {j}, giving {{value}}.",
    )


def _x_range_sum(a: int, b: int) -> tuple[str, str]:
    return f"sum(range({a}, {b}))", f"range({a}, {b}) stops before {b}, so this adds {a} + … + {b - 1} = {{value}}."


def _x_divmod(a: int, b: int) -> tuple[str, str]:
    q, r = divmod(a, b)
    return f"divmod({a}, {b})", f"{a} = {b} × {q} + {r}, so divmod returns the quotient and the remainder as a tuple."


def _x_comprehension(k: int, n: int) -> tuple[str, str]:
    return f"[x * {k} for x in range({n})]", f"range({n}) yields 0 to {n - 1} and each is multiplied by {k}."


def _x_filter(k: int, n: int) -> tuple[str, str]:
    return (
        f"[x for x in range({n}) if x % {k} == 0]",
        f"It keeps the numbers from 0 to {n - 1} that are divisible by {k}.",
    )


def _x_split(sentence: str) -> tuple[str, str]:
    return (
        f'len("{sentence}".split())',
        "split() with no argument splits on runs of whitespace, so the result counts the words.",
    )


def _x_count(word: str, letter: str) -> tuple[str, str]:
    return f'"{word}".count("{letter}")', f'count returns how many non-overlapping times "{letter}" occurs in "{word}".'


def _x_reverse(word: str) -> tuple[str, str]:
    return f'"{word}"[::-1]', "A slice with step -1 walks the string backwards, so it returns the reversed string."


def _x_sorted(numbers: tuple[int, ...]) -> tuple[str, str]:
    return f"sorted({list(numbers)})", "sorted returns a new list in ascending order and leaves the original unchanged."


def _x_spread(numbers: tuple[int, ...]) -> tuple[str, str]:
    return (
        f"max({list(numbers)}) - min({list(numbers)})",
        f"The largest value is {max(numbers)} and the smallest is {min(numbers)}, and their difference is {{value}}.",
    )


def _x_division(a: int, b: int) -> tuple[str, str]:
    return (
        f"{a} / {b}",
        f"In Python 3, / is true division and always returns a float; {a} // {b} would give the floor, {a // b}.",
    )


_EXPRESSIONS: dict[str, Callable[..., tuple[str, str]]] = {
    "slice": _x_slice,
    "range_sum": _x_range_sum,
    "divmod": _x_divmod,
    "comprehension": _x_comprehension,
    "filter": _x_filter,
    "split": _x_split,
    "count": _x_count,
    "reverse": _x_reverse,
    "sorted": _x_sorted,
    "spread": _x_spread,
    "division": _x_division,
}

LIST_NAMES = ("items", "names", "values", "words", "scores", "records", "numbers", "lines", "tokens", "prices")
DICT_NAMES = ("counts", "ages", "config", "stock", "totals", "settings", "inventory", "lookup")
#: (key, kind of variable, question, answer, why) — `{v}`/`{w}` are variable names
IDIOMS = (
    ("reverse", "list", "How do I reverse the list `{v}` in Python?", "`{v}[::-1]` for a reversed copy, or `{v}.reverse()` to reverse it in place.", "A slice with step -1 walks the list backwards; `.reverse()` changes the list itself and returns None."),
    ("dedupe", "list", "How do I remove duplicates from the list `{v}` but keep the original order?", "`list(dict.fromkeys({v}))`", "Dict keys are unique and keep insertion order, so the first occurrence of each item stays where it was."),
    ("counter", "list", "What is the easiest way to count how often each item occurs in `{v}`?", "`collections.Counter({v})`", "Counter maps every item to its number of occurrences, e.g. `Counter('aab') == {{'a': 2, 'b': 1}}`."),
    ("sort_by_value", "dict", "How do I sort the dict `{v}` by its values?", "`sorted({v}.items(), key=lambda kv: kv[1])`", "items() gives (key, value) pairs and the key function sorts them by the value; add `reverse=True` for largest first."),
    ("merge", "dict", "How do I merge the dicts `{v}` and `{w}` into a new one?", "`{v} | {w}` (Python 3.9+), or `{{**{v}, **{w}}}`", "Both build a new dict; where a key is in both, the value from `{w}` wins."),
    ("get_default", "dict", "How do I read `key` from the dict `{v}` without a KeyError if it is missing?", "`{v}.get(key, default)`", "get returns `default` (None if you leave it out) instead of raising KeyError for a missing key."),
    ("flatten", "list", "How do I flatten the list of lists `{v}` into one list?", "`[x for sub in {v} for x in sub]`", "The comprehension loops over each inner list and then over its items, keeping their order."),
    ("swap", "list", "How do I swap the values of the variables `{v}` and `{w}` in Python?", "`{v}, {w} = {w}, {v}`", "The right side builds a tuple of the old values first, then unpacks it into the two names."),
    ("join", "list", "How do I join the strings in `{v}` with a comma and a space?", "`', '.join({v})`", "join is a method of the separator string; every item must already be a string."),
    ("last", "list", "How do I get the last element of the list `{v}`?", "`{v}[-1]`", "Negative indices count from the end, so -1 is the last item; it raises IndexError on an empty list."),
    ("copy", "list", "How do I make a copy of the list `{v}` so that changing the copy leaves `{v}` alone?", "`{v}.copy()` (or `{v}[:]`)", "Both create a new list with the same items; use `copy.deepcopy({v})` when the items are lists themselves."),
    ("empty", "list", "What is the Pythonic way to check whether the list `{v}` is empty?", "`if not {v}:`", "Empty lists are falsy, so `not {v}` is True exactly when it has no items."),
    ("enumerate", "list", "How do I loop over `{v}` and also get the index of each item?", "`for i, item in enumerate({v}):`", "enumerate yields (index, item) pairs starting at 0; pass `start=1` to count from 1."),
    ("zip", "list", "How do I loop over the lists `{v}` and `{w}` side by side?", "`for a, b in zip({v}, {w}):`", "zip pairs items by position and stops at the end of the shorter list."),
    ("longest", "list", "How do I find the longest string in the list `{v}`?", "`max({v}, key=len)`", "max compares the items by their length and returns the first longest one."),
    ("sort_len", "list", "How do I sort the strings in `{v}` by length?", "`sorted({v}, key=len)`", "The key function makes sorted compare lengths; ties keep their original order because the sort is stable."),
    ("invert", "dict", "How do I swap the keys and values of the dict `{v}`?", "`{{value: key for key, value in {v}.items()}}`", "The comprehension builds a new dict from each pair reversed; if two keys share a value, the last one wins."),
    ("remove", "list", "How do I remove the first occurrence of `x` from the list `{v}`?", "`{v}.remove(x)`", "remove deletes the first item equal to x and raises ValueError if there is none."),
    ("keys_sorted", "dict", "How do I loop over the dict `{v}` in key order?", "`for key in sorted({v}):`", "Iterating a dict yields its keys, and sorted returns them as an ordered list."),
    ("index_max", "list", "How do I find the position of the largest number in `{v}`?", "`{v}.index(max({v}))`", "max finds the largest value and index returns the position of its first occurrence."),
    ("contains_key", "dict", "How do I check whether the dict `{v}` has the key `'name'`?", "`'name' in {v}`", "The in operator on a dict tests its keys, in constant time on average."),
    ("total", "list", "How do I add up all the numbers in the list `{v}`?", "`sum({v})`", "sum adds the items starting from 0; `sum({v}, start)` begins from another value."),
)  # fmt: skip


def _idiom(rng: Rng, held: bool) -> tuple[str, str]:
    _, kind, question, answer, why = pick(rng, IDIOMS, held, key=lambda idiom: idiom[0])
    v, w = rng.sample(LIST_NAMES if kind == "list" else DICT_NAMES, 2)
    fill = {"v": v, "w": w}
    return question.format(**fill), answer_easy(answer.format(**fill), why.format(**fill))


#: (key, signature, task description, code, steps, checks as (call, expected))
FUNCTIONS = (
    (
        "is_prime", "is_prime(n)", "returns True when n is a prime number",
        """def is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True""",
        ["Numbers below 2 are not prime.", "A composite n has a divisor no larger than √n, so checking d while d × d ≤ n is enough.", "Any divisor found means n is not prime; otherwise it is."],
        [("is_prime(1)", False), ("is_prime(2)", True), ("is_prime(97)", True), ("is_prime(91)", False)],
    ),
    (
        "digit_sum", "digit_sum(n)", "returns the sum of the decimal digits of the integer n (also for negative n)",
        """def digit_sum(n: int) -> int:
    n = abs(n)
    total = 0
    while n:
        total += n % 10
        n //= 10
    return total""",
        ["Take the absolute value so negative numbers work.", "n % 10 is the last digit; add it to the total.", "n //= 10 drops that digit; stop when n reaches 0."],
        [("digit_sum(0)", 0), ("digit_sum(1234)", 10), ("digit_sum(-509)", 14)],
    ),
    (
        "run_length", "run_length(text)", "compresses runs of repeated characters, e.g. 'aaabcc' becomes 'a3b1c2'",
        """def run_length(text: str) -> str:
    parts = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        parts.append(f"{text[i]}{j - i}")
        i = j
    return "".join(parts)""",
        ["Walk the string with i at the start of a run.", "Advance j while the characters equal text[i]; j − i is the run length.", "Append the character and its count, continue from j, and join the parts at the end."],
        [("run_length('aaabcc')", "a3b1c2"), ("run_length('')", ""), ("run_length('x')", "x1")],
    ),
    (
        "is_balanced", "is_balanced(s)", "checks whether the brackets (), [] and {} in s are balanced and properly nested",
        """def is_balanced(s: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in s:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack""",
        ["Push every opening bracket on a stack.", "A closing bracket must match the most recent unmatched opening one, so pop and compare.", "At the end the stack must be empty: every opening bracket was closed."],
        [("is_balanced('([]{})')", True), ("is_balanced('([)]')", False), ("is_balanced('((')", False), ("is_balanced('a(b)c')", True)],
    ),
    (
        "merge_sorted", "merge_sorted(a, b)", "merges two sorted lists into one sorted list in linear time",
        """def merge_sorted(a: list, b: list) -> list:
    merged, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            merged.append(a[i])
            i += 1
        else:
            merged.append(b[j])
            j += 1
    return merged + a[i:] + b[j:]""",
        ["Keep one index into each list.", "Repeatedly append the smaller front element and advance that index.", "When one list runs out, the rest of the other is already sorted, so append it."],
        [("merge_sorted([1, 4, 9], [2, 3, 10])", [1, 2, 3, 4, 9, 10]), ("merge_sorted([], [5])", [5])],
    ),
    (
        "binary_search", "binary_search(xs, target)", "returns the index of target in the sorted list xs, or -1 if it is absent",
        """def binary_search(xs: list, target) -> int:
    lo, hi = 0, len(xs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1""",
        ["Search the window [lo, hi], starting with the whole list.", "Compare the middle element: if it is too small the target can only be to the right, otherwise to the left.", "Each step halves the window, so it takes O(log n) steps; an empty window means the target is absent."],
        [("binary_search([1, 3, 5, 7, 9], 7)", 3), ("binary_search([1, 3, 5], 4)", -1), ("binary_search([], 1)", -1)],
    ),
    (
        "second_largest", "second_largest(xs)", "returns the second largest distinct value in xs, or None if there is none",
        """def second_largest(xs: list):
    distinct = sorted(set(xs), reverse=True)
    return distinct[1] if len(distinct) > 1 else None""",
        ["set(xs) removes repeated values, so [5, 5, 3] gives 3 rather than 5.", "Sorting the distinct values in descending order puts the answer at index 1.", "With fewer than two distinct values there is no second largest, so return None."],
        [("second_largest([4, 1, 4, 3])", 3), ("second_largest([7, 7])", None), ("second_largest([2, 9])", 2)],
    ),
    (
        "chunk", "chunk(xs, size)", "splits the list xs into consecutive pieces of length size (the last one may be shorter)",
        """def chunk(xs: list, size: int) -> list:
    if size < 1:
        raise ValueError("size must be at least 1")
    return [xs[i : i + size] for i in range(0, len(xs), size)]""",
        ["Reject sizes below 1, which would loop forever or make no sense.", "range(0, len(xs), size) gives the start of each piece.", "Slicing past the end is safe in Python, so the last piece is simply shorter."],
        [("chunk([1, 2, 3, 4, 5], 2)", [[1, 2], [3, 4], [5]]), ("chunk([], 3)", [])],
    ),
    (
        "top_words", "top_words(text, k)", "returns the k most common words of text (lower-cased) with their counts",
        """from collections import Counter


def top_words(text: str, k: int) -> list:
    words = text.lower().split()
    return Counter(words).most_common(k)""",
        ["Lower-case the text so 'The' and 'the' count as one word.", "split() breaks it into words on whitespace.", "Counter counts them and most_common(k) returns the k most frequent (word, count) pairs."],
        [("top_words('the cat and the hat', 1)", [("the", 2)]), ("top_words('a b a', 2)", [("a", 2), ("b", 1)])],
    ),
    (
        "roman_to_int", "roman_to_int(s)", "converts a Roman numeral such as 'MCMXCIV' to an integer",
        """def roman_to_int(s: str) -> int:
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for i, ch in enumerate(s):
        value = values[ch]
        if i + 1 < len(s) and values[s[i + 1]] > value:
            total -= value
        else:
            total += value
    return total""",
        ["Map each numeral to its value.", "A numeral smaller than the one after it is subtracted (the I in IV), otherwise added.", "For 'MCMXCIV': 1000 − 100 + 1000 − 10 + 100 − 1 + 5 = 1994."],
        [("roman_to_int('MCMXCIV')", 1994), ("roman_to_int('XLII')", 42), ("roman_to_int('III')", 3)],
    ),
    (
        "rotate", "rotate(xs, k)", "rotates the list xs to the right by k positions",
        """def rotate(xs: list, k: int) -> list:
    if not xs:
        return []
    k %= len(xs)
    return xs[-k:] + xs[:-k] if k else list(xs)""",
        ["An empty list stays empty.", "k %= len(xs) handles k larger than the list (and negative k).", "The last k items move to the front: xs[-k:] + xs[:-k]; k = 0 returns a copy unchanged."],
        [("rotate([1, 2, 3, 4], 1)", [4, 1, 2, 3]), ("rotate([1, 2, 3], 5)", [2, 3, 1]), ("rotate([], 2)", [])],
    ),
    (
        "running_mean", "running_mean(xs)", "returns the list of averages of the first 1, 2, 3, … numbers of xs",
        """def running_mean(xs: list) -> list:
    means, total = [], 0
    for i, x in enumerate(xs, start=1):
        total += x
        means.append(total / i)
    return means""",
        ["Keep a running total instead of re-adding the prefix each time (linear, not quadratic).", "After the i-th number the mean is total / i.", "enumerate(xs, start=1) supplies i directly."],
        [("running_mean([2, 4, 6])", [2.0, 3.0, 4.0]), ("running_mean([])", [])],
    ),
    (
        "count_vowels", "count_vowels(text)", "counts the vowels (a, e, i, o, u, either case) in text",
        """def count_vowels(text: str) -> int:
    return sum(1 for ch in text.lower() if ch in "aeiou")""",
        ["Lower-case the text so upper-case vowels count too.", "The generator yields 1 for every character that is a vowel.", "sum adds those ones up."],
        [("count_vowels('Hello World')", 3), ("count_vowels('xyz')", 0)],
    ),
    (
        "is_anagram", "is_anagram(a, b)", "checks whether two words are anagrams of each other, ignoring case",
        """def is_anagram(a: str, b: str) -> bool:
    return sorted(a.lower()) == sorted(b.lower())""",
        ["Anagrams use exactly the same letters the same number of times.", "Sorting the letters of both words gives equal lists exactly in that case.", "Lower-casing first makes 'Listen' and 'Silent' match."],
        [("is_anagram('Listen', 'Silent')", True), ("is_anagram('abc', 'abd')", False)],
    ),
    (
        "gcd", "gcd(a, b)", "computes the greatest common divisor of two non-negative integers with Euclid's algorithm",
        """def gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a""",
        ["Euclid: gcd(a, b) = gcd(b, a mod b), because any common divisor of a and b also divides a mod b.", "Repeat until b is 0.", "Then a is the greatest common divisor; gcd(48, 18) goes 48, 18 → 18, 12 → 12, 6 → 6, 0."],
        [("gcd(48, 18)", 6), ("gcd(7, 0)", 7), ("gcd(17, 5)", 1)],
    ),
    (
        "flatten", "flatten(nested)", "flattens arbitrarily nested lists into one flat list",
        """def flatten(nested: list) -> list:
    flat = []
    for item in nested:
        if isinstance(item, list):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat""",
        ["Go through the items in order.", "A list item is flattened recursively and its items are added.", "Anything else is appended as it is."],
        [("flatten([1, [2, [3, 4]], 5])", [1, 2, 3, 4, 5]), ("flatten([])", [])],
    ),
    (
        "caesar", "caesar(text, shift)", "shifts every letter of text by shift places in the alphabet, keeping case and leaving other characters unchanged",
        """def caesar(text: str, shift: int) -> str:
    out = []
    for ch in text:
        if ch.isascii() and ch.isalpha():
            base = ord("A") if ch.isupper() else ord("a")
            out.append(chr(base + (ord(ch) - base + shift) % 26))
        else:
            out.append(ch)
    return "".join(out)""",
        ["Only ASCII letters are shifted; spaces, digits and punctuation pass through.", "Work relative to 'A' or 'a' so the case is kept.", "% 26 wraps around the alphabet, so 'z' shifted by 1 becomes 'a' and negative shifts decode."],
        [("caesar('Hello, World!', 3)", "Khoor, Zruog!"), ("caesar('xyz', 2)", "zab"), ("caesar(caesar('abc', 5), -5)", "abc")],
    ),
    (
        "fizzbuzz", "fizzbuzz(n)", "returns the FizzBuzz strings for 1 to n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else the number",
        """def fizzbuzz(n: int) -> list:
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out""",
        ["Loop over 1 to n inclusive.", "Build the word from the two tests, so multiples of 15 get 'FizzBuzz' without a third case.", "An empty word means neither test matched, so use the number itself."],
        [("fizzbuzz(5)", ["1", "2", "Fizz", "4", "Buzz"]), ("fizzbuzz(15)[-1]", "FizzBuzz")],
    ),
)  # fmt: skip


def _function(rng: Rng, held: bool) -> tuple[str, str]:
    _, signature, task, code, steps, _ = pick(rng, FUNCTIONS, held, key=lambda f: f[0])
    question = rng.choice(
        (
            "Write a Python function `{s}` that {t}.",
            "Implement `{s}` in Python: it {t}. Explain it briefly.",
            "I need a Python function `{s}` that {t}. Keep it short.",
        )
    )
    body = f"```python\n{code}\n```\n"
    return question.format(s=signature, t=task), answer_hard(f"`{signature}` below {task}.", steps, body=body)


GENERATORS = ([_expression, _idiom], [_function])
