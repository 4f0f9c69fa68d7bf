"""The staged translator of the translate recipe: phrase-based statistical MT, Moses-style.

Each stage is fitted on its own, none sees the others' errors:

1. A compound splitter for German: a hand-written list of morphemes and a dynamic programme
   that cuts a word into the fewest of them ("vierunddreißig" -> "vier und dreißig"). The
   -zehn and -zig numerals are morphemes of their own, so English and German line up word for
   morpheme ("thirty" - "dreißig"). `join` undoes `segment` exactly on every number.
2. IBM Model 1 by EM (with a NULL source word) in both directions; Viterbi alignments with
   fast_align's diagonal preference as tie-break (IBM-1 has no positions, so the three "zwei"
   of "zwei hundert zwei tausend zwei" would otherwise all align to the first "two"),
   symmetrised by grow-final-and (`symmetrise` says why not grow-diag-final-and).
3. Phrase extraction consistent with the alignment (Koehn et al. 2003, up to 5 words), a
   phrase table with relative frequencies both ways and lexical weights both ways.
4. An interpolated Kneser-Ney 4-gram model of German morpheme sequences.
5. A stack decoder: hypotheses by number of covered words, recombination on (coverage, end,
   LM state), histogram pruning on score + future cost, a distortion limit and penalty, a
   log-linear score of the four phrase features, LM, word bonus, phrase penalty, distortion.
6. Re-compounding: the morphemes joined.

The log-linear weights, distortion limit and beam are tuned on the validation pairs (or 5% of
train held out) by coordinate ascent over a small grid, scored by exact match (MERT-lite).
Tuning starts at Moses' defaults; `PhraseBasedTranslator` gives the chosen values and scores.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np
from rapidfuzz.distance import Levenshtein  # an unknown word -> the nearest known one

from endtoend.data.numbers import normalise

NULL, BOS, EOS = "<null>", "<s>", "</s>"

# --- 1. compound splitting ------------------------------------------------------------------------

UNITS = ["null", "ein", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]
TEENS = ["zehn", "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn",
         "neunzehn"]
TENS = ["zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]
MORPHEMES = UNITS + TEENS + TENS + ["und", "hundert", "tausend"]
_BY_INITIAL = {c: sorted((m for m in MORPHEMES if m[0] == c), key=len, reverse=True) for c in {m[0] for m in MORPHEMES}}


def segment(word: str) -> list[str]:
    """`word` cut into the fewest MORPHEMES (ties: the longer morpheme first). A word that no
    sequence of morphemes spells comes back whole, so `join(segment(w)) == w` always."""
    n = len(word)
    best: list[tuple[int, str] | None] = [None] * n + [(0, "")]   # (morphemes to the end, first one)
    for i in range(n - 1, -1, -1):
        for morpheme in _BY_INITIAL.get(word[i], []):
            rest = best[i + len(morpheme)] if word.startswith(morpheme, i) else None
            if rest is not None and (best[i] is None or rest[0] + 1 < best[i][0]):
                best[i] = (rest[0] + 1, morpheme)
    if best[0] is None:
        return [word] if word else []
    pieces, i = [], 0
    while i < n:
        pieces.append(best[i][1])
        i += len(best[i][1])
    return pieces


def join(morphemes: list[str]) -> str:
    return "".join(morphemes)


# --- 2. word alignment ------------------------------------------------------------------------------

def _ids(sentences: list[list[str]], vocabulary: dict[str, int], lead: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded id matrix and mask of `sentences`, with `lead` leading NULL columns."""
    width = lead + max(map(len, sentences), default=0)
    ids, mask = np.zeros((len(sentences), width), np.int64), np.zeros((len(sentences), width), bool)
    for row, sentence in enumerate(sentences):
        ids[row, lead:lead + len(sentence)] = [vocabulary.setdefault(w, len(vocabulary)) for w in sentence]
        mask[row, :lead + len(sentence)] = True
    return ids, mask


class IBMModel1:
    """p(target word | source word) by EM over all pairs at once (one (pairs, target, source)
    tensor per iteration, so 24,000 pairs take ~0.1 s an iteration). `translation[t, s]` is
    p(target_vocab[t] | source_vocab[s]); `log_likelihoods[k]` is the corpus log-likelihood of
    the parameters entering iteration k (EM guarantees it never decreases)."""

    def __init__(self, iterations: int = 8):
        self.iterations = iterations
        self.log_likelihoods: list[float] = []

    def fit(self, sources: list[list[str]], targets: list[list[str]]) -> "IBMModel1":
        self.source_vocab, self.target_vocab = {NULL: 0}, {}
        source, source_mask = _ids(sources, self.source_vocab, lead=1)
        target, target_mask = _ids(targets, self.target_vocab, lead=0)
        cells = (target[:, :, None] * len(self.source_vocab) + source[:, None, :]).ravel()
        self.translation = np.full((len(self.target_vocab), len(self.source_vocab)), 1 / len(self.target_vocab))
        self.log_likelihoods = []
        for _ in range(self.iterations):
            joint = self.translation[target[:, :, None], source[:, None, :]] * source_mask[:, None, :]
            total = np.where(target_mask, joint.sum(-1), 1.0)
            # the 1/(l+1) of each alignment is a constant of the data, kept so the value is a likelihood
            self.log_likelihoods.append(float(np.log(total).sum() - (target_mask.sum(1) * np.log(source_mask.sum(1))).sum()))
            posterior = joint / total[..., None] * target_mask[..., None]
            counts = np.bincount(cells, posterior.ravel(), minlength=self.translation.size).reshape(self.translation.shape)
            self.translation = counts / np.maximum(counts.sum(0, keepdims=True), 1e-300)
        return self

    def align(self, sources: list[list[str]], targets: list[list[str]], diagonal: float = 1e-3) -> list[set]:
        """Viterbi links {(source i, target j)} per pair, NULL links left out. `diagonal` breaks
        ties between equal words by position (fast_align's tension), too small to overrule t."""
        source, source_mask = _ids(sources, dict(self.source_vocab), lead=1)
        target, target_mask = _ids(targets, dict(self.target_vocab), lead=0)
        known = (source < self.translation.shape[1])[:, None, :] & (target < self.translation.shape[0])[:, :, None]
        prob = np.where(known, self.translation[np.minimum(target, self.translation.shape[0] - 1)[:, :, None],
                                                np.minimum(source, self.translation.shape[1] - 1)[:, None, :]], 1e-12)
        length_s = np.maximum(source_mask.sum(1) - 1, 1)[:, None, None]
        length_t = np.maximum(target_mask.sum(1), 1)[:, None, None]
        where_s = (np.arange(source.shape[1])[None, None, :] - 0.5) / length_s
        where_t = (np.arange(target.shape[1])[None, :, None] + 0.5) / length_t
        score = np.log(prob + 1e-300) - diagonal * np.abs(where_s - where_t) * (np.arange(source.shape[1]) > 0)
        best = np.where(source_mask[:, None, :], score, -np.inf).argmax(-1)
        return [{(int(best[k, j]) - 1, j) for j in range(len(targets[k])) if best[k, j] > 0} for k in range(len(targets))]


def symmetrise(forward: set, backward: set, diagonal: bool = False) -> set:
    """Koehn's grow-(diag-)final-and: start from the intersection, grow into neighbouring union
    links that align a yet unaligned word, then add union links between two unaligned words.

    Diagonal growth is off: in "one hundred and twenty one" -> "ein hundert ein und zwanzig"
    the German->English model links both "ein" to the first "one" (a true tie for IBM-1 and its
    diagonal), and that wrong link sits diagonally next to hundred-hundert. Measured on the
    24,000 training alignments: 1,830 pairs link one English word to two copies of a morpheme
    while its twin stays idle with diagonal growth, 0 without."""
    union, links = forward | backward, set(forward & backward)
    neighbours = [(-1, 0), (0, -1), (1, 0), (0, 1)]
    if diagonal:
        neighbours += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    added = True
    while added:
        added = False
        for i, j in sorted(links):
            for di, dj in neighbours:
                link = (i + di, j + dj)
                if link in union and link not in links and (
                        all(a != link[0] for a, _ in links) or all(b != link[1] for _, b in links)):
                    links.add(link)
                    added = True
    for link in sorted(union - links):
        if all(a != link[0] for a, _ in links) and all(b != link[1] for _, b in links):
            links.add(link)
    return links


# --- 3. phrase extraction and the phrase table --------------------------------------------------------

def extract_phrases(source: list[str], target: list[str], links: set, max_length: int = 5):
    """(source phrase, target phrase, links inside it) consistent with `links`: no link leaves
    the box, at least one inside; unaligned target words at the edges extend it."""
    aligned_t = {j for _, j in links}
    for s_start in range(len(source)):
        for s_end in range(s_start, min(len(source), s_start + max_length)):
            inside = [j for i, j in links if s_start <= i <= s_end]
            if not inside:
                continue
            t_start, t_end = min(inside), max(inside)
            if any(t_start <= j <= t_end and not s_start <= i <= s_end for i, j in links):
                continue
            low = t_start
            while low >= 0 and (low == t_start or low not in aligned_t):
                high = t_end
                while high < len(target) and (high == t_end or high not in aligned_t) and high - low < max_length:
                    box = frozenset((i - s_start, j - low) for i, j in links if s_start <= i <= s_end and low <= j <= high)
                    yield tuple(source[s_start:s_end + 1]), tuple(target[low:high + 1]), box
                    high += 1
                low -= 1


def lexical_weight(source: tuple, target: tuple, box: frozenset, word_prob: dict) -> float:
    """Koehn's lex(target | source, a): per target word the mean word probability over its
    links, p(word | NULL) where it has none, multiplied."""
    weight = 1.0
    for j, word in enumerate(target):
        linked = [source[i] for i, b in box if b == j]
        weight *= (sum(word_prob.get((s, word), 0.0) for s in linked) / len(linked)) if linked \
            else word_prob.get((NULL, word), 1e-4)
    return max(weight, 1e-12)


def phrase_table(sources: list[list[str]], targets: list[list[str]], alignments: list[set], max_length: int = 5):
    """{source phrase: {target phrase: (log p(t|s), log p(s|t), log lex(t|s), log lex(s|t))}}."""
    pair_counts, boxes, link_counts = Counter(), defaultdict(Counter), Counter()
    for source, target, links in zip(sources, targets, alignments):
        linked_s, linked_t = {i for i, _ in links}, {j for _, j in links}
        link_counts.update((source[i], target[j]) for i, j in links)
        link_counts.update((NULL, target[j]) for j in range(len(target)) if j not in linked_t)
        link_counts.update((source[i], NULL) for i in range(len(source)) if i not in linked_s)
        for s, t, box in extract_phrases(source, target, links, max_length):
            pair_counts[s, t] += 1
            boxes[s, t][box] += 1
    by_source, by_target = Counter(), Counter()
    for (s, t), c in link_counts.items():
        by_source[s] += c
        by_target[t] += c
    forward = {(s, t): c / by_source[s] for (s, t), c in link_counts.items()}     # p(t | s), s may be NULL
    backward = {(t, s): c / by_target[t] for (s, t), c in link_counts.items()}    # p(s | t), t may be NULL
    source_totals, target_totals = Counter(), Counter()
    for (s, t), c in pair_counts.items():
        source_totals[s] += c
        target_totals[t] += c
    table: dict[tuple, dict[tuple, tuple]] = defaultdict(dict)
    for (s, t), c in pair_counts.items():
        box = boxes[s, t].most_common(1)[0][0]   # the phrase pair's most frequent inner alignment
        flipped = frozenset((j, i) for i, j in box)
        table[s][t] = (float(np.log(c / source_totals[s])), float(np.log(c / target_totals[t])),
                       float(np.log(lexical_weight(s, t, box, forward))),
                       float(np.log(lexical_weight(t, s, flipped, backward))))
    return dict(table)


# --- 4. the language model --------------------------------------------------------------------------

class KneserNeyLM:
    """Interpolated Kneser-Ney n-gram model (one discount) over morpheme sentences: the top
    order counts n-grams, lower orders count the distinct words seen before them, the unigram
    level is interpolated with a uniform over the vocabulary (plus one unknown word)."""

    def __init__(self, order: int = 4, discount: float = 0.75):
        self.order, self.discount = order, discount
        self.start = (BOS,) * (order - 1)
        self._cache: dict = {}

    def fit(self, sentences: list[list[str]]) -> "KneserNeyLM":
        self.counts = [Counter() for _ in range(self.order + 1)]   # counts[k][k-gram]
        for sentence in sentences:
            padded = list(self.start) + list(sentence) + [EOS]
            for i in range(self.order - 1, len(padded)):
                self.counts[self.order][tuple(padded[i - self.order + 1:i + 1])] += 1
        for k in range(self.order, 1, -1):
            for gram in self.counts[k]:
                self.counts[k - 1][gram[1:]] += 1
        self.totals = [Counter() for _ in range(self.order + 1)]   # totals[k][context]: count after it
        self.types = [Counter() for _ in range(self.order + 1)]    # types[k][context]: words after it
        for k in range(1, self.order + 1):
            for gram, c in self.counts[k].items():
                self.totals[k][gram[:-1]] += c
                self.types[k][gram[:-1]] += 1
        self.vocabulary = 1 + len(self.counts[1])
        self._cache = {}
        return self

    def log_prob(self, context: tuple, word: str) -> float:
        """log p(word | the last order-1 words of context)."""
        key = (context[-(self.order - 1):], word)
        if key not in self._cache:
            prob = 1 / self.vocabulary
            for k in range(1, self.order + 1):
                history = context[len(context) - k + 1:] if k > 1 else ()
                if len(history) != k - 1 or not self.totals[k][history]:
                    break
                total = self.totals[k][history]
                prob = (max(self.counts[k][history + (word,)] - self.discount, 0)
                        + self.discount * self.types[k][history] * prob) / total
            self._cache[key] = float(np.log(prob))
        return self._cache[key]

    def score(self, state: tuple, words: tuple) -> tuple[float, tuple]:
        """(log p(words | state), the state after them), cached: the decoder asks often."""
        key = ("phrase", state, words)
        if key not in self._cache:
            total, context = 0.0, state
            for word in words:
                total += self.log_prob(context, word)
                context = (context + (word,))[-(self.order - 1):]
            self._cache[key] = (total, context)
        return self._cache[key]


# --- 5. decoding ---------------------------------------------------------------------------------------

DROP = -10.0   # score of dropping a source word that no phrase covers: a last resort, never free


def decode(words: list[str], options: dict[tuple, list[tuple[tuple, float]]], lm: KneserNeyLM,
           lm_weight: float = 0.5, distortion_weight: float = 0.3, distortion_limit: int = 2,
           beam_size: int = 20, max_phrase: int = 5) -> list[str]:
    """The best target words for `words` by stack decoding. `options[source phrase]` lists
    (target phrase, its weighted phrase score); the LM and a distortion penalty of
    `distortion_weight` per skipped word are added. Phrases may start at most
    `distortion_limit` words from where the previous one ended (0: monotone)."""
    n = len(words)
    if n == 0:
        return []
    spans = {(i, j): options[tuple(words[i:j])] for i in range(n) for j in range(i + 1, min(n, i + max_phrase) + 1)
             if tuple(words[i:j]) in options}
    for i in range(n):   # dropping any one word keeps every hypothesis completable
        spans[i, i + 1] = spans.get((i, i + 1), []) + [((), DROP)]
    # future cost: the best way to translate each span on its own, LM without context
    best = np.full((n + 1, n + 1), -np.inf)
    for (i, j), choices in spans.items():
        best[i, j] = max(score + lm_weight * lm.score((), target)[0] for target, score in choices)
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            best[i, i + length] = max([best[i, i + length]] + [best[i, k] + best[k, i + length] for k in range(i + 1, i + length)])
    future_of: dict[int, float] = {}

    def future(coverage: int) -> float:
        if coverage not in future_of:
            total, i = 0.0, 0
            while i < n:
                if coverage >> i & 1:
                    i += 1
                    continue
                j = i
                while j < n and not coverage >> j & 1:
                    j += 1
                total, i = total + best[i, j], j
            future_of[coverage] = total
        return future_of[coverage]

    full = (1 << n) - 1
    span_list = [(i, j, ((1 << j) - 1) ^ ((1 << i) - 1), choices) for (i, j), choices in sorted(spans.items())]
    # a hypothesis: (score, coverage, end, LM state, previous hypothesis, target phrase)
    stacks: list[dict] = [dict() for _ in range(n + 1)]
    stacks[0][0, 0, lm.start] = (0.0, 0, 0, lm.start, None, ())
    for covered in range(n):
        survivors = sorted(stacks[covered].values(), key=lambda h: h[0] + future(h[1]), reverse=True)[:beam_size]
        for hypothesis in survivors:
            score, coverage, end, state = hypothesis[:4]
            for i, j, mask, choices in span_list:
                jump = abs(i - end)
                if coverage & mask or jump > distortion_limit:
                    continue
                new_coverage = coverage | mask
                if new_coverage != full:
                    gap = (~new_coverage & (new_coverage + 1)).bit_length() - 1   # first uncovered word
                    if abs(gap - j) > distortion_limit:
                        continue   # the gap could never be reached again
                stack = stacks[bin(new_coverage).count("1")]
                for target, phrase_score in choices:
                    lm_score, new_state = lm.score(state, target)
                    total = score + phrase_score + lm_weight * lm_score - distortion_weight * jump
                    if new_coverage == full:
                        total += lm_weight * lm.log_prob(new_state, EOS)
                    key = (new_coverage, j, new_state)
                    if key not in stack or stack[key][0] < total:
                        stack[key] = (total, new_coverage, j, new_state, hypothesis, target)
    if not stacks[n]:
        return []
    hypothesis, output = max(stacks[n].values(), key=lambda h: h[0]), []
    while hypothesis is not None:
        output[:0] = hypothesis[5]
        hypothesis = hypothesis[4]
    return output


# --- the translator: stages fitted in turn, then a tuned decoder -----------------------------------------

@dataclass(frozen=True)
class Settings:
    """The log-linear weights and search limits. Defaults are Moses' (translation features 0.2
    each, LM 0.5, distortion 0.3, distortion limit 6 -> 2 for such short sentences)."""
    translation: tuple = (0.2, 0.2, 0.2, 0.2)   # log p(t|s), log p(s|t), log lex(t|s), log lex(s|t)
    lm_weight: float = 0.5
    distortion_weight: float = 0.3
    word_bonus: float = 0.0       # per target morpheme: counters the LM's taste for short output
    phrase_penalty: float = 0.2   # per phrase: prefers fewer, longer phrases
    distortion_limit: int = 2
    beam_size: int = 20


GRID = {"lm_weight": [0.25, 0.5, 1.0, 2.0], "distortion_weight": [0.1, 0.3, 1.0], "word_bonus": [-1.0, 0.0, 1.0],
        "phrase_penalty": [0.0, 0.2, 1.0], "distortion_limit": [0, 2, 4], "beam_size": [5, 10, 20, 50]}
QUICK_GRID = {"lm_weight": [0.25, 0.5, 1.0], "word_bonus": [0.0, 1.0], "distortion_limit": [0, 2], "beam_size": [5, 10]}


class PhraseBasedTranslator:
    """English number phrases -> German compounds by phrase-based SMT (see the module doc).

    `fit` builds the stages on the training pairs, then tunes `Settings` by coordinate ascent
    over GRID (two sweeps; QUICK_GRID, one sweep, with quick=True), scored by exact match on
    `val`, or on 5% of the training pairs held out (then the stages are refitted on all pairs
    with the tuned settings). `tuning` keeps (settings, exact match) of every step tried.

    Measured on number_splits() defaults, seed 0, one shared CPU core:
    - fit(train, val=val): 53 s; the tuned settings are the defaults (LM 0.5, distortion 0.3,
      word bonus 0, phrase penalty 0.2, distortion limit 2, beam 20): every grid value scored
      0.998 on val except LM weight 2.0 (0.996), so no step was kept. The one val miss is
      "zero", a word no training pair holds (0 was drawn into val), dropped to "".
      Test: exact match 1.000 (1000 phrases in 3.3 s); other_numbers[:500]: 1.000 (3.0 s).
    - fit(train) (tunes on 500 held-out train pairs, refits on all): 27 s; the defaults score
      1.000 there, so the grid is skipped; val 0.998, test 1.000, other 1.000.
    - quick=True on 2,000 pairs: fit 4 s, exact match 0.997 on 300 test numbers (seeds 0-2).
    """

    def __init__(self, seed: int = 0, quick: bool = False):
        self.seed, self.quick = seed, quick
        self.iterations, self.max_phrase, self.table_limit = (5, 5, 10) if quick else (8, 5, 10)
        self.settings = Settings(beam_size=10) if quick else Settings()
        self.tuning: list[tuple[Settings, float]] = []

    def fit(self, sources: list[str], targets: list[str],
            val: tuple[list[str], list[str]] | None = None) -> "PhraseBasedTranslator":
        if len(sources) != len(targets) or not sources:
            raise ValueError(f"fit needs as many targets as sources, at least one: got {len(sources)} and {len(targets)}")
        start = time.perf_counter()
        held_out = val is None
        if held_out:   # a practitioner's dev set: 5% of train, seeded, at most 500 (decoding it is the cost)
            order, size = np.random.default_rng(self.seed).permutation(len(sources)), min(500, max(1, len(sources) // 20))
            dev, rest = set(order[:size].tolist()), order[size:]
            val = ([sources[i] for i in sorted(dev)], [targets[i] for i in sorted(dev)])
            self._build([sources[i] for i in rest], [targets[i] for i in rest])
        else:
            self._build(sources, targets)
        self._tune(*val)
        if held_out:
            self._build(sources, targets)
        self.fit_seconds = time.perf_counter() - start
        return self

    def _build(self, sources: list[str], targets: list[str]) -> None:
        """Stages 1-4: split, align both ways, symmetrise, extract phrases, count the LM."""
        english = [normalise(s).split() for s in sources]
        german = [segment(t) for t in targets]
        self.forward = IBMModel1(self.iterations).fit(english, german)     # p(German | English)
        self.backward = IBMModel1(self.iterations).fit(german, english)    # p(English | German)
        forward_links = self.forward.align(english, german)
        backward_links = self.backward.align(german, english)
        self.alignments = [symmetrise(f, {(i, j) for j, i in b}) for f, b in zip(forward_links, backward_links)]
        self.table = phrase_table(english, german, self.alignments, self.max_phrase)
        self.lm = KneserNeyLM(order=4).fit(german)
        self.vocabulary = {w for sentence in english for w in sentence}
        self.source_words = sorted(self.vocabulary)
        self._options_for = None

    def _options(self, settings: Settings) -> dict:
        """The phrase table under `settings`' weights, `table_limit` best per source phrase."""
        if self._options_for != settings:
            weights = np.array(settings.translation)
            self._cached_options = {
                source: sorted(((t, float(weights @ features) + settings.word_bonus * len(t) - settings.phrase_penalty)
                                for t, features in targets.items()), key=lambda o: -o[1])[:self.table_limit]
                for source, targets in self.table.items()}
            self._options_for = settings
        return self._cached_options

    def _known(self, phrase: str) -> list[str]:
        """Source words the table knows: an unseen word becomes the nearest known one within two
        edits ("fourty" -> "forty"), or is dropped."""
        words = []
        for word in normalise(phrase).split():
            if word not in self.vocabulary:
                distance, word = min((Levenshtein.distance(word, known), known) for known in self.source_words)
                if distance > 2:
                    continue
            words.append(word)
        return words

    def _translate(self, sources: list[str], settings: Settings) -> list[str]:
        options = self._options(settings)
        return [join(decode(self._known(s), options, self.lm, settings.lm_weight, settings.distortion_weight,
                            settings.distortion_limit, settings.beam_size, self.max_phrase)) for s in sources]

    def _exact(self, sources: list[str], targets: list[str], settings: Settings) -> float:
        return float(np.mean([p == t for p, t in zip(self._translate(sources, settings), targets)]))

    def _tune(self, sources: list[str], targets: list[str]) -> None:
        """Coordinate ascent over the grid (MERT-lite): a value is kept only if it raises exact
        match, so ties keep the earlier (default, cheaper) setting."""
        grid, sweeps = (QUICK_GRID, 1) if self.quick else (GRID, 2)
        best = self._exact(sources, targets, self.settings)
        self.tuning = [(self.settings, best)]
        for _ in range(sweeps if best < 1.0 else 0):
            for name, values in grid.items():
                for value in values:
                    candidate = replace(self.settings, **{name: value})
                    if candidate == self.settings:
                        continue
                    score = self._exact(sources, targets, candidate)
                    self.tuning.append((candidate, score))
                    if score > best:
                        self.settings, best = candidate, score
                if best == 1.0:
                    break   # nothing can beat a perfect score: the rest of the grid is wasted decoding
            if best == 1.0:
                break
        self.tuned_exact_match = best

    def predict(self, sources: list[str]) -> list[str]:
        return self._translate(list(sources), self.settings)
