"""The synthetic training data both GPU benchmarks use (same batches for bunmind and PyTorch):
token sequences from a fixed random sparse Markov chain over the vocabulary, so the loss has
somewhere to go (from ln V toward the chain's entropy) and the two runs can be compared."""
import random

_CHAINS = {}


def _chain(vocab, seed, fanout=4):
    key = (vocab, seed)
    if key not in _CHAINS:
        r = random.Random(seed)
        _CHAINS[key] = [[r.randrange(3, vocab) for _ in range(fanout)] for _ in range(vocab)]
    return _CHAINS[key]


def synthetic_batch(step, b, t, vocab, seed=42):
    """(ids, targets, mask) as flat lists of b·t values: targets are ids shifted by one; every
    position counts except the last of each row."""
    nxt = _chain(vocab, seed)
    r = random.Random(seed * 1_000_003 + step)
    ids, targets, mask = [], [], []
    for _ in range(b):
        tok = r.randrange(3, vocab)
        row = [tok]
        for _ in range(t):
            tok = nxt[tok][r.randrange(len(nxt[tok]))]
            row.append(tok)
        ids += row[:t]
        targets += row[1 : t + 1]
        mask += [1.0] * (t - 1) + [0.0]
    return ids, targets, mask
