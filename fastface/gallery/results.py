"""What Gallery.search returns: per query, the ranked gallery items and identities, both stages'
scores and the open-set decision."""
from dataclasses import dataclass
from typing import List, Optional

import torch

UNKNOWN = "unknown"


@dataclass
class SearchResults:
    """Stage 2 order (best first), all (B, k): items (gallery item ids), distance = alpha*EMD +
    (1-alpha)*(1-cosine), emd, cosine. Stage 1 order: stage1_items, stage1_cosine (B, k).
    known (B,) bool: best distance <= threshold (all True without a threshold).
    identities / paths: per query, the names and source paths of `items` (lists of k).
    queries: the query photos' paths (searching images) or None."""
    items: torch.Tensor
    distance: torch.Tensor
    emd: torch.Tensor
    cosine: torch.Tensor
    stage1_items: torch.Tensor
    stage1_cosine: torch.Tensor
    known: torch.Tensor
    identities: List[List[str]]
    paths: List[List[Optional[str]]]
    threshold: Optional[float] = None
    queries: Optional[List[str]] = None

    def __len__(self):
        return self.items.shape[0]

    def identity(self, i):
        """Query i's answer: the best item's identity, or "unknown" when its distance is above the threshold."""
        return self.identities[i][0] if bool(self.known[i]) else UNKNOWN

    def ranked_identities(self, i):
        """Query i's identities best first, each once: [(name, best distance, item id)]."""
        seen, out = set(), []
        for name, d, item in zip(self.identities[i], self.distance[i].tolist(), self.items[i].tolist()):
            if name not in seen:
                seen.add(name)
                out.append((name, d, item))
        return out

    def record(self, i, top=None):
        """Query i as a JSON-able dict: identity, score, known, top identities, and the ranked items."""
        top = len(self.identities[i]) if top is None else top
        items = [{"item": int(self.items[i, j]), "identity": self.identities[i][j], "path": self.paths[i][j],
                  "distance": float(self.distance[i, j]), "emd": float(self.emd[i, j]),
                  "cosine": float(self.cosine[i, j])} for j in range(min(top, self.items.shape[1]))]
        return {"query": None if self.queries is None else self.queries[i], "identity": self.identity(i),
                "score": float(self.distance[i, 0]), "known": bool(self.known[i]),
                "top_identities": [{"identity": n, "distance": d, "item": it}
                                   for n, d, it in self.ranked_identities(i)[:5]],
                "matches": items,
                "stage1": [{"item": int(a), "cosine": float(c)}
                           for a, c in zip(self.stage1_items[i][:top], self.stage1_cosine[i][:top])]}
