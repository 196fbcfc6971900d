"""Safe rollout for a policy that is still learning: judge a new version on the states the
server really sees and on the outcomes clients report, within minutes (docs/rollout.md).

    ordering.py   step / run_id: a regression within a run is refused, a new run noted;
                  versions_behind; run_id_for (the publishing side)
    resident.py   the last K good versions stay loaded, found by sha256, prefix or tag
    shadow.py     a ring buffer of request states; compare() -> Divergence
    guard.py      --max-divergence, --max-sign-flips; non-finite actions always refuse
    judging.py    Judge: marks, order, shadow and guard before a swap (the registry's hook)
    canary.py     a fraction of requests to the new version; promoted or rolled back
    feedback.py   signed request ids; rewards per version, bounded
    ranktest.py   the one-sided Mann-Whitney U test the canary uses
    marks.py      versions marked bad, kept in --state-dir across restarts
    follow.py     --follow latest | max:<key> | min:<key>

Each module is pure of the server: nothing here imports FastAPI, reads the environment or holds
module-level state; torch is used where actions are computed or tensors measured.
"""

from .canary import Canary, CanaryConfig, CanaryDecision
from .feedback import FeedbackRefused, FeedbackStore, Issued, RequestIds, RewardStats
from .follow import FollowRule, Published, published
from .guard import Guard
from .judging import Judge, Verdict
from .marks import BadMarks, Mark
from .ordering import Position, check_order, run_id_for, versions_behind
from .ranktest import UTest, mann_whitney_less
from .resident import ResidentVersions, model_bytes
from .shadow import DEAD_BAND, Divergence, StateBuffer, compare

__all__ = [
    "DEAD_BAND",
    "BadMarks",
    "Canary",
    "CanaryConfig",
    "CanaryDecision",
    "Divergence",
    "FeedbackRefused",
    "FeedbackStore",
    "FollowRule",
    "Guard",
    "Issued",
    "Judge",
    "Mark",
    "Position",
    "Published",
    "RequestIds",
    "ResidentVersions",
    "RewardStats",
    "StateBuffer",
    "UTest",
    "Verdict",
    "check_order",
    "compare",
    "mann_whitney_less",
    "model_bytes",
    "published",
    "run_id_for",
    "versions_behind",
]
