"""Words, tokens and the mappers that carry the source's attention onto the target's tokens.

Taught in notebook 05 (the shape problem and word alignment). A prompt of n words becomes
``model_max_length`` tokens: a start token, each word's tokens (a word may be several tokens, like
"turquoise" here or "tabby" in SD), an end token, then padding. The mapper M gives A_hat = A M
(A: (pixels, tokens) of the source, A_hat: the source's maps in the target's token order).
"""
from __future__ import annotations

import dataclasses
import weakref

import torch


@dataclasses.dataclass(frozen=True)
class Word:
    text: str
    tokens: tuple[int, ...]  # positions in the padded token sequence


@dataclasses.dataclass(frozen=True)
class Tokens:
    """A prompt tokenized and split into words, once: what every mapper, schedule and blend reads.

    ``ids``: the content tokens (no start or end token); ``words``: each word with the positions of
    its tokens in the padded sequence (1 = the first word, after the start token); ``length``: the
    tokenizer's padded length L (16 for the shipped model, 77 for Stable Diffusion).
    """

    text: str
    ids: tuple[int, ...]
    words: tuple[Word, ...]
    length: int

    def indices(self, word: str | int) -> list[int]:
        """Positions of ``word``'s tokens (every occurrence); a phrase ("big tabby") or a word index."""
        if isinstance(word, int):
            if not 0 <= word < len(self.words):
                raise ValueError(f"word index {word} is outside {self.text!r}, which has "
                                 f"{len(self.words)} words")
            return list(self.words[word].tokens)
        want = [_norm(w) for w in str(word).split()]
        have = [_norm(w.text) for w in self.words]
        out = []
        for i in range(len(self.words) - len(want) + 1):
            if have[i: i + len(want)] == want:
                out += [t for w in self.words[i: i + len(want)] for t in w.tokens]
        if not want or not out:
            raise ValueError(f"word {word!r} is not in the prompt {self.text!r}; its words are {have}")
        return out


_TOKENS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {text: Tokens}


def _tokenize(tokenizer, prompt: str) -> Tokens:
    ids = tuple(tokenizer(prompt, add_special_tokens=False).input_ids)
    limit = tokenizer.model_max_length
    if len(ids) + 2 > limit:
        raise ValueError(f"prompt {prompt!r} needs {len(ids) + 2} tokens but this tokenizer holds "
                         f"{limit} (start and end tokens included); shorten the prompt")
    words, pos = [], 1
    for w in prompt.split():
        n = len(tokenizer(w, add_special_tokens=False).input_ids)
        words.append(Word(w, tuple(range(pos, pos + n))))
        pos += n
    if pos - 1 != len(ids):
        raise ValueError(f"cannot split {prompt!r} into words token by token; separate words "
                         f"and punctuation by spaces")
    return Tokens(prompt, ids, tuple(words), limit)


def tokens_of(tokenizer, prompt: str) -> Tokens:
    """The prompt's :class:`Tokens`: the one place a prompt is tokenized for its words and
    alignment (remembered per tokenizer, so a prompt is tokenized once)."""
    try:
        memo = _TOKENS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memory
        memo = {}
    if prompt not in memo:
        if len(memo) > 10_000:
            memo.clear()
        memo[prompt] = _tokenize(tokenizer, prompt)
    return memo[prompt]


def n_content_tokens(tokenizer, text: str) -> int:
    """How many tokens ``text`` becomes (no start/end tokens)."""
    return len(tokens_of(tokenizer, text).ids)


def words_of(tokenizer, prompt: str) -> list[Word]:
    """The prompt's words (split on spaces) with the positions of their tokens (1 = first word)."""
    return list(tokens_of(tokenizer, prompt).words)


def _norm(text: str) -> str:
    return text.lower().strip(".,;:!?")


def token_indices(tokenizer, prompt: str, word: str | int) -> list[int]:
    """Positions of ``word``'s tokens in the padded prompt (every occurrence; 1-based after the start token).

    ``word`` may be a phrase of several words ("big tabby") or a word index (int).
    """
    return tokens_of(tokenizer, prompt).indices(word)


def _tail(n_src: int, n_tgt: int, length: int, put) -> None:
    """Start token, end token and padding: start -> start; the target's end token and pads take the
    source's end token and pads in order (the last source pad repeats if the target has more)."""
    put(0, 0)
    shift = n_src - n_tgt
    for j in range(n_tgt + 1, length):  # end token then padding of the target
        put(min(j + shift, length - 1), j)


def _replace_groups(src: list[Word], tgt: list[Word], source: str, target: str):
    """Pairs (source words, target words) that correspond in a word swap."""
    if len(src) == len(tgt):
        return [([a], [b]) for a, b in zip(src, tgt)]
    p = 0
    while p < min(len(src), len(tgt)) and _norm(src[p].text) == _norm(tgt[p].text):
        p += 1
    s = 0
    while s < min(len(src), len(tgt)) - p and _norm(src[-1 - s].text) == _norm(tgt[-1 - s].text):
        s += 1
    mid_s, mid_t = src[p: len(src) - s], tgt[p: len(tgt) - s]
    if not mid_s or not mid_t or (len(mid_s) > 1 and len(mid_t) > 1):
        raise ValueError(
            f"a replace edit needs the same number of words, or one word swapped for several: "
            f"{source!r} has {len(src)} words, {target!r} has {len(tgt)}, and the part that differs "
            f"({[w.text for w in mid_s]} -> {[w.text for w in mid_t]}) cannot be mapped word to word; "
            f"use mode='refine' for inserted words")
    pairs = [([a], [b]) for a, b in zip(src[:p], tgt[:p])] + [(mid_s, mid_t)]
    return pairs + [([a], [b]) for a, b in zip(src[len(src) - s:], tgt[len(tgt) - s:])]


def word_pairs(tokenizer, source: str, target: str) -> list[tuple[list[int], list[int]]]:
    """The token positions of the words that correspond in a word swap: [(source positions, target
    positions), ...], one pair per word (or per group of words swapped for one)."""
    src, tgt = words_of(tokenizer, source), words_of(tokenizer, target)
    return [([t for w in ws for t in w.tokens], [t for w in wt for t in w.tokens])
            for ws, wt in _replace_groups(src, tgt, source, target)]


def replace_mapper(tokenizer, source: str, target: str, variant: str = "copy") -> torch.Tensor:
    """Mapper M (n_tokens, n_tokens) of a word swap, A_hat = A M (notebook 05).

    Corresponding tokens map one to one. Where a group of a source tokens becomes b != a target
    tokens ("orange" -> "big tabby"), each target token receives the mean of the a source maps
    (variant "copy": M entries 1/a) or an equal share of it (variant "average": 1/(a*b), so the
    group's total attention is kept).
    """
    if variant not in ("copy", "average"):
        raise ValueError(f"mapper variant {variant!r} is unknown; use 'copy' or 'average'")
    L = tokenizer.model_max_length
    M = torch.zeros(L, L)  # (n_tokens source, n_tokens target)
    for a, b in word_pairs(tokenizer, source, target):
        if len(a) == len(b):
            M[a, b] = 1.0
        else:
            M[torch.tensor(a)[:, None], torch.tensor(b)[None, :]] = (
                1.0 / len(a) if variant == "copy" else 1.0 / (len(a) * len(b)))
    n_s, n_t = n_content_tokens(tokenizer, source), n_content_tokens(tokenizer, target)
    _tail(n_s, n_t, L, lambda i, j: M.__setitem__((i, j), 1.0))
    return M


def alignment_table(a: list, b: list, match: float = 1.0, mismatch: float = -1.0,
                    gap: float = 0.0) -> list[list[float]]:
    """Needleman-Wunsch's table F ((n + 1) x (m + 1)): F[i][j] is the best score of aligning the first
    i items of ``a`` with the first j of ``b``,

        F[i][0] = i gap,  F[0][j] = j gap,
        F[i][j] = max(F[i-1][j-1] + (match if a[i-1] == b[j-1] else mismatch), F[i-1][j] + gap, F[i][j-1] + gap).
    """
    n, m = len(a), len(b)
    F = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        F[i][0] = i * gap
    for j in range(1, m + 1):
        F[0][j] = j * gap
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = F[i - 1][j - 1] + (match if a[i - 1] == b[j - 1] else mismatch)
            F[i][j] = max(diag, F[i - 1][j] + gap, F[i][j - 1] + gap)
    return F


def global_alignment(a: list, b: list, match: float = 1.0, mismatch: float = -1.0,
                     gap: float = 0.0) -> list[tuple[int | None, int | None]]:
    """Needleman-Wunsch alignment of two sequences: pairs (i, j), None marking a gap; the table of
    :func:`alignment_table`, traced back from its corner (matches first, then gaps in ``b``)."""
    F = alignment_table(a, b, match, mismatch, gap)
    n, m = len(a), len(b)
    pairs, i, j = [], n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and F[i][j] == F[i - 1][j - 1] + (match if a[i - 1] == b[j - 1] else mismatch):
            pairs.append((i - 1, j - 1)); i -= 1; j -= 1  # noqa: E702
        elif i > 0 and F[i][j] == F[i - 1][j] + gap:
            pairs.append((i - 1, None)); i -= 1  # noqa: E702
        else:
            pairs.append((None, j - 1)); j -= 1  # noqa: E702
    return pairs[::-1]


def refine_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index map, alphas), each (n_tokens,), from a global alignment of the token sequences.

    Target token j takes the source's map of token ``index[j]`` where ``alphas[j] = 1`` (the same
    token in both prompts) and keeps its own map where ``alphas[j] = 0`` (an inserted token).
    """
    ids_s, ids_t = tokens_of(tokenizer, source).ids, tokens_of(tokenizer, target).ids
    L = tokenizer.model_max_length
    index, alphas = torch.zeros(L, dtype=torch.long), torch.zeros(L)

    def put(i, j):
        index[j], alphas[j] = i, 1.0

    for i, j in global_alignment(ids_s, ids_t):
        if i is not None and j is not None and ids_s[i] == ids_t[j]:
            put(i + 1, j + 1)
    _tail(len(ids_s), len(ids_t), L, put)
    return index, alphas


def refine_matrix(index: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """The refine alignment as a mapper matrix M (n_tokens, n_tokens): M[index[j], j] = alphas[j]."""
    L = index.shape[0]
    M = torch.zeros(L, L)
    M[index, torch.arange(L)] = alphas
    return M
