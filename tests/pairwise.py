"""All-pairs covering sets: every value of every option appears, and every pair of values of
two options meets in at least one case, without multiplying the whole grid out."""
import itertools
import random
from typing import Callable, Dict, List, Sequence


def pairwise(options: Dict[str, Sequence], valid: Callable[[dict], bool] = lambda c: True,
             seed: int = 0, candidates: int = 60) -> List[dict]:
    """Greedy all-pairs cover (deterministic for a seed); ``valid`` rejects impossible cases."""
    rng = random.Random(seed)
    names = list(options)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for i, j in itertools.product(range(len(options[names[a]])), range(len(options[names[b]]))):
            uncovered.add((a, i, b, j))

    def pairs(idx):
        return {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(range(len(names)), 2)}

    def case(idx):
        return {n: options[n][k] for n, k in zip(names, idx)}

    cases = []
    stall = 0
    while uncovered:
        # seed each candidate with one uncovered pair so progress is guaranteed when possible
        a, i, b, j = rng.choice(sorted(uncovered))
        best, best_gain = None, 0
        for _ in range(candidates):
            idx = [rng.randrange(len(options[n])) for n in names]
            idx[a], idx[b] = i, j
            if not valid(case(idx)):
                continue
            gain = len(pairs(idx) & uncovered)
            if gain > best_gain:
                best, best_gain = idx, gain
        if best is None:
            stall += 1
            if stall >= 50:  # a pair no valid case can hold: drop it
                uncovered.discard((a, i, b, j))
                stall = 0
            continue
        stall = 0
        uncovered -= pairs(best)
        cases.append(case(best))
    return cases
