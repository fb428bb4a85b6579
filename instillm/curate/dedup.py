"""Deduplication: exact (normalized hash), MinHash-LSH near-duplicates, and the greedy ROUGE-L filter.

All three keep the first occurrence in input order and stream: memory grows with the kept
rows' keys (exact, MinHash) or, for ROUGE-L, with the kept instructions themselves (the filter
compares each new instruction with every kept one, as Self-Instruct does).

Exact dedup
    Key: SHA-256-derived 128-bit digest of the SuperNI-normalized (`normalize_answer`:
    lowercase, ASCII punctuation removed, whitespace collapsed) user turns (joined with a
    newline) and final response; `on="instruction"` hashes the user turns only.

MinHash-LSH
    Shingles: word 5-grams over ROUGE tokens (lowercase [a-z0-9] runs), joined with one space;
    a text with fewer than 5 tokens is one shingle (its whole token sequence); a text without any
    token is not indexed (it can only be an exact duplicate). Word shingles rather than character
    shingles because instructions that differ in a word or two should collide while templated
    prompts with different content should not. A shingle is hashed to 32 bits by a polynomial
    hash of its bytes (`shingle_hash32`), computed for all shingles of a text at once with
    prefix sums (SHA-1 per shingle, datasketch's default, measured 3-4x slower). Signatures equal
    `datasketch.MinHash(num_perm, seed=1, hashfunc=shingle_hash32)` (its default "affine32"
    scheme) fed the same shingles, bit for bit. Banding uses datasketch's
    `_optimal_param` choice of (bands, rows) for the Jaccard threshold (equal weights for false
    positives and negatives, e.g. 0.8 -> 9 bands x 13 rows at 128 permutations); each band is
    stored as a 64-bit BLAKE2b digest of its values (datasketch keeps the raw bytes; a 64-bit key
    keeps 1M rows well under 2 GiB). Like `MinHashLSH.query`, a row is a near duplicate when any
    band equals a band of a kept row (no verification step), so detection is probabilistic
    around the threshold (the usual LSH S-curve). We do not use datasketch's index itself: its
    in-memory storage costs ~3 KiB per key (measured: a set per bucket), 3 GiB for 1M rows.

Greedy ROUGE-L filter (Self-Instruct / Alpaca)
    An instruction is kept iff its ROUGE-L F (rouge-score default tokenizer, no stemming) with
    every kept instruction (and every `against` text) is <= threshold, in input order: exactly
    the decisions of `max(scorer.score(new, kept)) > 0.7 -> drop`. Exact LCS (bit-parallel,
    `instillm.metrics`) is computed only for kept texts whose upper bound on F exceeds
    the threshold; the bound is F evaluated with rouge-score's float formula at an upper bound of
    the LCS (the token-multiset overlap, from an inverted index). F is strictly increasing in the
    integer LCS for fixed lengths (the float rounding, ~1e-16 relative, is far below the 1/LCS
    step), so a pruned pair can never have F above the threshold and decisions are identical.

Scaling out with `datasets.map(num_proc=...)`
    Everything expensive is per row and pure; only "keep the first occurrence" is sequential.
    Compute keys in parallel, then run one cheap sequential pass over them::

        hasher = MinHasher(num_perm=128)
        bands, rows = lsh_params(0.8, 128)
        def keys(batch):
            texts = [u + "\\n" + r for u, r in zip(batch["user"], batch["response"])]
            return {"exact": [exact_key(*p) for p in zip(batch["user"], batch["response"])],
                    "bands": [hasher.band_keys(t, bands, rows) for t in texts]}
        ds = ds.map(keys, batched=True, num_proc=16)
        seen, lsh = set(), LSHIndex(bands)
        keep = []
        for i, (k, b) in enumerate(zip(ds["exact"], ds["bands"])):   # sequential, ~1-2 us/row
            ok = k not in seen and (not b or lsh.query(b) is None)
            seen.add(k)          # exact dedup sees every row; LSH only the ones exact dedup kept
            if ok and b:
                lsh.insert(b, i)
            keep.append(ok)
        ds = ds.select([i for i, ok in enumerate(keep) if ok])

    Keys are stable across processes (fixed hash functions and permutation seed). Note the
    `seen.add(k)` order above mirrors `dedup_file` (exact first, then MinHash on survivors).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from instillm.curate.common import CurationSummary, conversation_parts, curate_file, user_text
from instillm.data.schema import Example
from instillm.errors import ConfigError, RowError
from instillm.metrics import lcs_from_masks, normalize_answer, rouge_tokenize

DEFAULT_NUM_PERM = 128
DEFAULT_NGRAM = 5
DEFAULT_SEED = 1
DEFAULT_JACCARD = 0.8
DEFAULT_ROUGE_L = 0.7
_SEP = b"\xff"  # never inside UTF-8 text: separates the hashed parts of a key

# ---------------------------------------------------------------- exact


def exact_key(*parts: str) -> bytes:
    """128-bit key of the normalized parts (`normalize_answer` each, then hashed with separators)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(normalize_answer(p).encode("utf-8", "surrogatepass"))
        h.update(_SEP)
    return h.digest()[:16]


def example_key(ex: Example, on: str = "conversation") -> bytes:
    """Exact-dedup key of an example: user turns + final response, or (`on="instruction"`) user turns."""
    user, response = conversation_parts(ex)
    return exact_key(user, response) if on == "conversation" else exact_key(user)


def exact_dedup(texts: Iterable[str]) -> list[bool]:
    """Keep flags: True for the first occurrence of each normalized text."""
    seen: set[bytes] = set()
    flags = []
    for t in texts:
        k = exact_key(t)
        flags.append(k not in seen)
        seen.add(k)
    return flags


# ---------------------------------------------------------------- MinHash-LSH

_U32 = np.uint32
_U64 = np.uint64
_FMIX32 = (_U32(16), _U32(0x85EBCA6B), _U32(13), _U32(0xC2B2AE35), _U32(16))
_POLY = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2^64
_POLY_INV = pow(_POLY, -1, 1 << 64)


def shingle_hash32(shingle: bytes) -> int:
    """32-bit hash of a shingle: the high half of sum(byte_k * P^k) mod 2^64 (scalar reference)."""
    h = 0
    for k, c in enumerate(shingle):
        h = (h + c * pow(_POLY, k, 1 << 64)) % (1 << 64)
    return h >> 32


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch pre-mixes input hashes with it)."""
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


class _Powers:
    """P^k and P^-k modulo 2^64 for k < len, grown on demand."""

    def __init__(self) -> None:
        """Only P^0 to start with."""
        self.pw = np.ones(1, _U64)
        self.ipw = np.ones(1, _U64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(P^k, P^-k) arrays with at least n entries."""
        if n > len(self.pw):
            m = max(n, 2 * len(self.pw), 4096)
            self.pw = np.concatenate([[_U64(1)], np.cumprod(np.full(m - 1, _POLY, _U64))])  # uint64 wraps
            self.ipw = np.concatenate([[_U64(1)], np.cumprod(np.full(m - 1, _POLY_INV, _U64))])
        return self.pw, self.ipw


class MinHasher:
    """MinHash signatures of texts over word n-gram shingles; equal to datasketch's affine32 MinHash.

    `signature(text)` equals `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash32)` updated
    with `shingles(text)`, bit for bit; the shingle hashes are computed for all shingles of a text
    at once (prefix sums of a polynomial hash), not one Python call per shingle.
    """

    def __init__(self, num_perm: int = DEFAULT_NUM_PERM, seed: int = DEFAULT_SEED, ngram: int = DEFAULT_NGRAM) -> None:
        """Draw the permutations exactly as `datasketch.MinHash(num_perm, seed)` does."""
        if num_perm < 1 or ngram < 1:
            raise ConfigError(f"num_perm and ngram must be positive (got {num_perm}, {ngram})")
        gen = np.random.RandomState(seed)
        self.a = gen.randint(0, 1 << 31, num_perm, dtype=_U32) * _U32(2) + _U32(1)
        self.b = gen.randint(0, 1 << 32, num_perm, dtype=_U32)
        self.num_perm = num_perm
        self.ngram = ngram
        self._powers = _Powers()

    def shingles(self, text: str) -> list[bytes]:
        """Word n-grams of the ROUGE tokens (the whole sequence when shorter; none without tokens)."""
        toks = rouge_tokenize(text)
        n = self.ngram
        if len(toks) <= n:
            return [" ".join(toks).encode()] if toks else []
        return [" ".join(toks[i : i + n]).encode() for i in range(len(toks) - n + 1)]

    def shingle_hashes(self, text: str) -> np.ndarray:
        """`shingle_hash32` of every shingle of `text` (uint32), vectorized."""
        toks = rouge_tokenize(text)
        if not toks:
            return np.empty(0, _U32)
        data = " ".join(toks).encode()  # tokens are [a-z0-9]+: ASCII, one space between them
        size = len(data)
        pw, ipw = self._powers.upto(size + 1)
        chars = np.frombuffer(data, np.uint8).astype(_U64)
        prefix = np.zeros(size + 1, _U64)
        np.cumsum(chars * pw[:size], out=prefix[1:])  # prefix[i] = sum_{k<i} c_k P^k, wrapping
        spaces = np.flatnonzero(chars == 32)
        n = self.ngram
        if len(toks) <= n:
            first, end = np.zeros(1, np.int64), np.array([size])
        else:
            first = np.concatenate([[0], spaces[: len(toks) - n] + 1])
            end = np.concatenate([spaces[n - 1 :], [size]])
        h = (prefix[end] - prefix[first]) * ipw[first]  # sum_{k} c_{first+k} P^k: position-free
        return (h >> _U64(32)).astype(_U32)

    def signature(self, text: str) -> np.ndarray | None:
        """uint32 signature (num_perm values), or None for a text without tokens."""
        hv = self.shingle_hashes(text)
        if not hv.size:
            return None
        phv = _fmix32(hv)[:, None] * self.a + self.b  # uint32 arithmetic wraps: mod 2^32, as datasketch
        return phv.min(axis=0)

    def band_keys(self, text: str, bands: int, rows: int) -> list[int]:
        """64-bit keys of the signature's bands (empty for a text without tokens); stable across runs."""
        sig = self.signature(text)
        if sig is None:
            return []
        if bands * rows > self.num_perm:
            raise ConfigError(f"{bands} bands x {rows} rows need more than {self.num_perm} permutations")
        raw = sig.astype("<u4").tobytes()
        w = rows * 4
        b2 = hashlib.blake2b
        return [
            int.from_bytes(b2(raw[i * w : (i + 1) * w], digest_size=8).digest(), "little", signed=True)
            for i in range(bands)
        ]  # signed: fits an int64 column (Arrow, numpy)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int = DEFAULT_NUM_PERM) -> tuple[int, int]:
    """(bands, rows) minimising false positive + false negative probability mass, as datasketch picks them."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"the MinHash Jaccard threshold must be between 0 and 1 (exclusive), got {threshold}")
    s_fp = np.linspace(0.0, threshold, 2001)
    s_fn = np.linspace(threshold, 1.0, 2001)
    best, opt = math.inf, (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _simpson(1.0 - (1.0 - s_fp**r) ** b, s_fp)
            fn = _simpson((1.0 - s_fn**r) ** b, s_fn)
            err = 0.5 * fp + 0.5 * fn
            if err < best:
                best, opt = err, (b, r)
    return opt


def _simpson(y: np.ndarray, x: np.ndarray) -> float:
    """Composite Simpson integral over an odd number of equally spaced points."""
    h = (x[-1] - x[0]) / (len(x) - 1)
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


class LSHIndex:
    """Band tables of kept rows: band key -> label of the first row that had it."""

    def __init__(self, bands: int) -> None:
        """One dict per band."""
        self.tables: list[dict[int, object]] = [{} for _ in range(bands)]

    def query(self, keys: Sequence[int]) -> object | None:
        """Label of a kept row sharing a band with `keys` (the earliest band's), or None."""
        for table, k in zip(self.tables, keys):
            hit = table.get(k)
            if hit is not None:
                return hit
        return None

    def insert(self, keys: Sequence[int], label: object) -> None:
        """Remember a kept row under each of its band keys (earlier rows keep their buckets)."""
        for table, k in zip(self.tables, keys):
            table.setdefault(k, label)


class MinHashDedup:
    """Streaming MinHash-LSH near-duplicate detector: `offer(text, label)` keeps first occurrences."""

    def __init__(
        self,
        threshold: float = DEFAULT_JACCARD,
        num_perm: int = DEFAULT_NUM_PERM,
        ngram: int = DEFAULT_NGRAM,
        seed: int = DEFAULT_SEED,
    ) -> None:
        """Choose (bands, rows) for the Jaccard threshold and draw the permutations."""
        self.threshold = threshold
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.hasher = MinHasher(num_perm, seed, ngram)
        self.index = LSHIndex(self.bands)

    def offer(self, text: str, label: object) -> object | None:
        """None (and remember the text) if no kept text shares a band, else the matching text's label."""
        keys = self.hasher.band_keys(text, self.bands, self.rows)
        if not keys:
            return None
        hit = self.index.query(keys)
        if hit is None:
            self.index.insert(keys, label)
        return hit


def minhash_dedup(
    texts: Iterable[str],
    threshold: float = DEFAULT_JACCARD,
    num_perm: int = DEFAULT_NUM_PERM,
    ngram: int = DEFAULT_NGRAM,
    seed: int = DEFAULT_SEED,
) -> list[bool]:
    """Keep flags: False for a text that shares an LSH band with an earlier kept text."""
    d = MinHashDedup(threshold, num_perm, ngram, seed)
    return [d.offer(t, i) is None for i, t in enumerate(texts)]


# ---------------------------------------------------------------- greedy ROUGE-L


class _Posting:
    """Growable (kept-text slot, token count) arrays for one token."""

    __slots__ = ("docs", "counts", "n")

    def __init__(self) -> None:
        """An empty posting list."""
        self.docs = np.empty(4, np.int64)
        self.counts = np.empty(4, np.int64)
        self.n = 0

    def append(self, doc: int, count: int) -> None:
        """Add one (slot, count), doubling the arrays when full."""
        if self.n == len(self.docs):
            self.docs = np.concatenate([self.docs, np.empty(self.n, np.int64)])
            self.counts = np.concatenate([self.counts, np.empty(self.n, np.int64)])
        self.docs[self.n] = doc
        self.counts[self.n] = count
        self.n += 1


class RougeLFilter:
    """The kept pool of a greedy ROUGE-L filter, indexed so most pairs are decided without an LCS.

    `match(text)` finds a kept text whose ROUGE-L F with `text` exceeds the threshold; `add`
    puts a text into the pool; `offer` does both the way the Self-Instruct filter does.
    """

    def __init__(self, threshold: float = DEFAULT_ROUGE_L, against: Iterable[str] = ()) -> None:
        """An empty pool, then `against` (e.g. seed instructions) added as already kept."""
        self.threshold = float(threshold)
        self.size = 0  # texts in the pool, including ones without any token
        self._first_label: object = None
        self._vocab: dict[str, int] = {}
        self._docs: list[list[int]] = []  # token ids of pooled texts that have tokens (a slot each)
        self._labels: list[object] = []  # label per slot
        self._lens = np.empty(64, np.int64)
        self._postings: dict[int, _Posting] = {}
        self.exact_lcs = 0  # pairs scored with an exact LCS (the rest were pruned by the bound)
        for i, t in enumerate(against):
            self.add(t, ("against", i))

    def match(self, text: str, best: bool = False) -> tuple[float, object] | None:
        """(F, label) of a pooled text with ROUGE-L F > threshold, or None when `text` would be kept.

        With `best`, the F returned is the maximum over the pool (rouge-score's `max`), else the
        first one found above the threshold (the decision is the same).
        """
        thr = self.threshold
        if self.size == 0 or thr != thr:  # empty pool, or NaN: `score > nan` is never true
            return None
        if thr < 0:  # every F is >= 0 > threshold, even for texts without tokens
            return 0.0 if not best else self._max_f(text), self._first_label
        toks = rouge_tokenize(text)
        if not toks or not self._docs:
            return None  # F = 0 <= threshold
        vocab = self._vocab
        ids = [vocab.get(t, -1) for t in toks]
        m = len(ids)
        n = len(self._docs)
        overlap = np.zeros(n, np.int64)
        for tok, c in Counter(ids).items():
            p = self._postings.get(tok)
            if p is None:
                continue
            if c == 1:
                overlap[p.docs[: p.n]] += 1
            else:
                overlap[p.docs[: p.n]] += np.minimum(p.counts[: p.n], c)
        # F at the LCS bound, with rouge-score's float operations (target = new text, prediction = kept).
        lcs_ub = overlap.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = lcs_ub / self._lens[:n]
            recall = lcs_ub / m
            f_ub = 2 * precision * recall / (precision + recall)
        f_ub[overlap == 0] = 0.0
        cand = np.flatnonzero(f_ub > thr)
        if cand.size == 0:
            return None
        cand = cand[np.argsort(-f_ub[cand], kind="stable")]
        masks: dict[int, int] = {}
        for i, tok in enumerate(ids):
            masks[tok] = masks.get(tok, 0) | (1 << i)
        found: tuple[float, object] | None = None
        for slot in cand.tolist():
            if found is not None and f_ub[slot] <= found[0]:
                break  # no remaining pair can beat the best F found
            doc = self._docs[slot]
            lcs = lcs_from_masks(masks, m, doc)
            self.exact_lcs += 1
            prec = lcs / len(doc)
            rec = lcs / m
            f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
            if f > thr and (found is None or f > found[0]):
                found = (f, self._labels[slot])
                if not best:
                    break
        return found

    def _max_f(self, text: str) -> float:
        """Max ROUGE-L F against the pool by brute force (only used for negative thresholds)."""
        from instillm.metrics import rouge_l_tokens

        toks = rouge_tokenize(text)
        inv = {i: t for t, i in self._vocab.items()}
        return max((rouge_l_tokens(toks, [inv[i] for i in d]).fmeasure for d in self._docs), default=0.0)

    def add(self, text: str, label: object = None) -> None:
        """Put `text` into the pool (as kept)."""
        if self.size == 0:
            self._first_label = label
        self.size += 1
        toks = rouge_tokenize(text)
        if not toks:
            return
        vocab = self._vocab
        ids = [vocab.setdefault(t, len(vocab)) for t in toks]
        slot = len(self._docs)
        self._docs.append(ids)
        self._labels.append(label)
        if slot == len(self._lens):
            self._lens = np.concatenate([self._lens, np.empty(slot, np.int64)])
        self._lens[slot] = len(ids)
        postings = self._postings
        for tok, c in Counter(ids).items():
            p = postings.get(tok)
            if p is None:
                p = postings[tok] = _Posting()
            p.append(slot, c)

    def offer(self, text: str, label: object = None) -> bool:
        """Keep `text` (add it to the pool and return True) unless a pooled text is too similar."""
        if self.match(text) is not None:
            return False
        self.add(text, label)
        return True


def rouge_filter(texts: Sequence[str], threshold: float = DEFAULT_ROUGE_L, against: Sequence[str] = ()) -> list[bool]:
    """Keep flags of the greedy Self-Instruct filter: keep iff max ROUGE-L F vs kept (and `against`) <= threshold."""
    f = RougeLFilter(threshold, against)
    return [f.offer(t) for t in texts]


def rouge_filter_examples(
    examples: Iterable[Example], threshold: float = DEFAULT_ROUGE_L, against: Sequence[str] = ()
) -> list[Example]:
    """The examples the greedy ROUGE-L filter keeps, comparing instructions (user turns joined by newline)."""
    f = RougeLFilter(threshold, against)
    return [ex for ex in examples if f.offer(user_text(ex))]


# ---------------------------------------------------------------- file API


def dedup_file(
    inp: str | Path,
    out: str | Path,
    exact: bool | None = None,
    minhash: float | None = None,
    rouge_l: float | None = None,
    *,
    on: str = "conversation",
    num_perm: int = DEFAULT_NUM_PERM,
    ngram: int = DEFAULT_NGRAM,
    against: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> CurationSummary:
    """Remove duplicates from canonical JSONL `inp` into `out` (rejects beside it); first occurrences stay.

    Steps, in this order, each on the rows the earlier ones kept:
      - `exact` (reason `exact_duplicate`): same normalized key (`on`: "conversation" = user turns
        + final response, or "instruction"). `exact=None` (default) means on unless `rouge_l` is
        given, so `rouge_l` alone is exactly the Self-Instruct filter; pass exact=True for both.
      - `minhash` = Jaccard threshold (reason `minhash_duplicate`): MinHash-LSH on the same text as `on`.
      - `rouge_l` = ROUGE-L F threshold (reason `rouge_l_duplicate`): greedy filter on the
        instruction (user turns joined by a newline); `against` texts count as already kept.
    """
    if on not in ("conversation", "instruction"):
        raise ConfigError(f"on must be 'conversation' or 'instruction', got {on!r}")
    if exact is None:
        exact = rouge_l is None
    steps = []
    if exact:
        seen: dict[bytes, int] = {}

        def exact_step(ex: Example, line: int) -> RowError | None:
            k = example_key(ex, on)
            first = seen.setdefault(k, line)
            if first != line:
                return RowError("exact_duplicate", f"same normalized {on} as line {first}")
            return None

        steps.append(exact_step)
    if minhash is not None:
        mh = MinHashDedup(minhash, num_perm, ngram)

        def minhash_step(ex: Example, line: int) -> RowError | None:
            text = "\n".join(conversation_parts(ex)) if on == "conversation" else user_text(ex)
            hit = mh.offer(text, line)
            if hit is not None:
                return RowError(
                    "minhash_duplicate",
                    f"shares a MinHash-LSH band with line {hit} (Jaccard threshold {minhash}, "
                    f"{mh.bands} bands x {mh.rows} rows, word {ngram}-grams)",
                )
            return None

        steps.append(minhash_step)
    if rouge_l is not None:
        rf = RougeLFilter(rouge_l, against)

        def rouge_step(ex: Example, line: int) -> RowError | None:
            text = user_text(ex)
            hit = rf.match(text, best=True)
            if hit is not None:
                f, label = hit
                where = f"against[{label[1]}]" if isinstance(label, tuple) else f"line {label}"
                return RowError("rouge_l_duplicate", f"instruction ROUGE-L F {f:.4f} > {rouge_l} with {where}")
            rf.add(text, line)
            return None

        steps.append(rouge_step)
    if not steps:
        raise ConfigError("dedup needs at least one method: exact, minhash or rouge_l")
    return curate_file(inp, out, steps, progress)
