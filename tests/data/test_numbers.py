"""The translate corpus: num2words phrases, split by value (endtoend.data.numbers)."""

from num2words import num2words

from endtoend.data import numbers


def test_phrases_are_num2words_with_the_source_normalised():
    assert numbers.english(1234) == "one thousand two hundred and thirty four"
    assert numbers.german(1234) == num2words(1234, lang="de") == "eintausendzweihundertvierunddreißig"
    assert numbers.normalise("  Four hundred,  and Twenty-Two ") == "four hundred and twenty two"
    english, german = numbers.pairs([0, 27])
    assert english == ["zero", "twenty seven"] and german == ["null", "siebenundzwanzig"]


def test_splits_are_disjoint_seeded_and_the_test_set_mixes_magnitudes():
    splits = numbers.number_splits(train=3000, val=200, test=400, seed=0)
    sets = {name: set(values) for name, values in splits.items()}
    assert {name: len(values) for name, values in sets.items()} == {"train": 3000, "val": 200, "test": 400}
    assert not (sets["train"] & sets["test"] or sets["train"] & sets["val"] or sets["val"] & sets["test"])
    assert sum(n < 1000 for n in splits["test"]) == 100 and sum(n < 1000 for n in splits["val"]) == 50
    digits = {len(str(n)) for n in splits["test"] if n >= 1000}
    assert digits == {4, 5, 6}  # log-uniform: every magnitude up to 999,999
    assert max(splits["train"]) < numbers.LIMIT
    assert numbers.number_splits(train=3000, val=200, test=400, seed=0) == splits
    # the test set depends on the seed and its size only, not on how much is trained on
    assert numbers.number_splits(train=500, val=200, test=400, seed=0)["test"] == splits["test"]


def test_other_numbers_avoid_everything_given():
    taken = set(range(0, 1_000_000, 2))
    other = numbers.other_numbers(taken, count=300, seed=1)
    assert len(set(other)) == 300 and all(n % 2 for n in other)
