"""The soak's judges (``bench/soak.py``): pure functions over recorded histories, so each one is proven able
to fail (``bench/tests/test_soak_checks.py`` feeds them loss, duplication, reordering and wrong transitions).

A history is what one subscription saw, in arrival order, as plain tuples (JSON-able, kept in the results):

* ``("sub", t, offset, epoch, recovered, since)``: a ``subscribed`` frame (``since``: the offset the client
  asked to resume after, or None on a first subscribe). A Pusher subscription's ``subscription_succeeded``
  is ``("sub", t, None, None, False, None)``: Pusher clients never recover.
* ``("msg", t, offset, epoch, id)``: a message (``id``: the publisher's unique payload id). A Pusher frame has
  no offset (None): it is placed by ``id`` through the room's truth (what other subscribers and the
  publishers' acknowledgements say that id's offset is).
* ``("end", t, why)``: the subscription ended on purpose (churn, the client left); nothing is owed after it.

One logical subscription lives across reconnects: the client resubscribes with ``since`` its last offset.

A publisher's acknowledgement (`Ack`) is ``(room, id, sent, acked, epoch, offset)``: when the publish was sent and
when it was acknowledged (the histories' clock), and where it was stored when the path says (the HTTP API gives
both, the helper the offset, the Pusher API neither: None).
Standard library only.
"""

from __future__ import annotations

import math
import statistics
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Event = Sequence[Any]
Ack = Sequence[Any]


@dataclass
class RoomTruth:
    """What is known of a room's messages: ``ids[(epoch, offset)]`` the payload id stored there (from the
    publishers' acknowledgements and the subscribers' frames), and ``top[epoch]`` the room's last offset
    at the end of the run (read from the server after the publishers stopped)."""

    ids: dict[tuple[str, int], str] = field(default_factory=dict)
    top: dict[str, int] = field(default_factory=dict)
    #: (epoch, offset) places seen with two different ids: a failover lost acknowledged writes and gave
    #: their offsets to the next messages (README "The limits, exactly"); reported, not judged.
    reused: set[tuple[str, int]] = field(default_factory=set)
    #: Where each id was seen: one place, or more when one publish was stored twice.
    where: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def learn(self, epoch: str, offset: int, mid: str) -> None:
        had = self.ids.setdefault((epoch, offset), mid)
        if had != mid:
            self.reused.add((epoch, offset))
        places = self.where.setdefault(mid, [])
        if (epoch, offset) not in places:
            first = places[0][0] if places else epoch
            places.append((epoch, offset))
            places.sort(key=lambda p: (p[0] != first, p[1]))

    def place(self, mid: str, nth: int = 0) -> tuple[str, int] | None:
        """Where the ``nth`` frame of ``mid`` a subscription got belongs (a publish stored twice comes twice)."""
        places = self.where.get(mid)
        return places[min(nth, len(places) - 1)] if places else None

    def stored_twice(self) -> dict[str, list[tuple[str, int]]]:
        """Publishes stored at more than one offset: one acknowledged publish that every subscriber sees twice."""
        return {m: p for m, p in self.where.items() if len(p) > 1}


@dataclass
class SubVerdict:
    """One subscription's judgement. ``violations`` fail the run; ``resets`` are explained
    ``recovered: false`` cases (the explanation per case)."""

    delivered: int = 0
    lost: list[tuple[str, int]] = field(default_factory=list)
    duplicated: list[tuple[str, int]] = field(default_factory=list)
    out_of_order: list[tuple[str, int]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unplaced: int = 0


def explain_reset(prev_epoch: str | None, prev_offset: int | None, epoch: str, offset: int,
                  history_size: int) -> str | None:
    """Why a running subscription was told ``recovered: false``, or None when nothing explains it: the
    epoch changed (the room's history was lost), the gap fell out of history (more than ``history_size``
    messages missed), or the room's top fell below what was delivered (a failover lost acknowledged
    writes and reuses their offsets, README "The limits, exactly")."""
    if prev_epoch is None or prev_offset is None:
        return "first subscription"
    if epoch != prev_epoch:
        return "epoch changed"
    if offset - prev_offset > history_size:
        return f"gap out of history ({offset - prev_offset} missed > {history_size} kept)"
    if offset < prev_offset:
        return f"top {offset} below delivered {prev_offset} (failover lost writes)"
    return None


def check_subscription(events: Iterable[Event], truth: RoomTruth, history_size: int,
                       alive_at_end: bool = True) -> SubVerdict:
    """Every stored message of the room exactly once, in order, while subscribed or recovered: offsets
    contiguous within an epoch from the ``subscribed`` offset (or the resumed ``since``), none twice, none
    late; a ``recovered: false`` explained; a subscription alive at the end has reached the room's top."""
    v = SubVerdict()
    epoch: str | None = None
    cur: int | None = None
    seen: set[int] = set()
    missing: set[tuple[str, int]] = set()
    pusher = False
    nth: dict[str, int] = {}
    for ev in events:
        kind = ev[0]
        if kind == "sub":
            _, _t, offset, ep, recovered, since = ev
            if offset is None:  # a Pusher (re)subscription: no recovery, a fresh segment
                pusher = True
                epoch, cur, seen = None, None, set()
                continue
            if recovered and since is not None and epoch is not None:
                if ep != epoch:
                    v.violations.append(f"recovered:true across an epoch change ({epoch} -> {ep})")
                    epoch, cur, seen = ep, offset, set()
                elif since != cur:
                    v.violations.append(f"resumed since {since} but had delivered up to {cur}")
                continue
            if epoch is not None:
                why = explain_reset(epoch, cur, ep, offset, history_size)
                if why is None:
                    v.violations.append(f"recovered:false unexplained (at {cur}, told {offset}, epoch {ep})")
                    why = "unexplained"
                v.resets.append(why)
                # What was missing before a reset is not owed any more: the client was told to reload.
                missing = set()
            if ep != epoch or (cur is not None and offset < cur):
                seen = {o for o in seen if o <= offset} if ep == epoch else set()
            epoch, cur = ep, offset
            continue
        if kind == "end":
            epoch = None if pusher else epoch
            cur = None if pusher else cur
            alive_at_end = False
            continue
        _, _t, offset, ep, mid = ev
        if offset is None:
            placed = truth.place(mid, nth.get(mid, 0))
            nth[mid] = nth.get(mid, 0) + 1
            if placed is None:
                v.unplaced += 1
                continue
            ep, offset = placed
            if epoch is None or ep != epoch:  # a Pusher segment starts at whatever comes first
                epoch, cur, seen = ep, offset - 1, set()
        v.delivered += 1
        if ep != epoch:
            v.violations.append(f"offset {offset} of epoch {ep} while subscribed in {epoch}, no reset between")
            continue
        if mid is not None and not pusher:
            truth.learn(ep, offset, mid)
        assert cur is not None
        if offset in seen:
            v.duplicated.append((ep, offset))
        elif (ep, offset) in missing:
            missing.discard((ep, offset))
            v.out_of_order.append((ep, offset))
            seen.add(offset)
        elif offset <= cur:
            v.out_of_order.append((ep, offset))
            seen.add(offset)
        else:
            missing.update((ep, o) for o in range(cur + 1, offset))
            cur = offset
            seen.add(offset)
    lost = sorted(missing)
    if alive_at_end and epoch is not None and cur is not None and epoch in truth.top:
        lost += [(epoch, o) for o in range(cur + 1, truth.top[epoch] + 1)]
    v.lost = lost
    return v


@dataclass
class Totals:
    subscriptions: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unplaced: int = 0
    stored_twice: int = 0
    stored_twice_examples: list[str] = field(default_factory=list)
    resets: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    #: Acknowledged publishes that reached none of the subscriptions live around them (`unreached`).
    unreached: list[str] = field(default_factory=list)
    #: Of those, the ones a failover lost before anyone got them (`lost_in_failover`): a documented limit.
    lost_in_failover: list[str] = field(default_factory=list)


#: The faults that fail a Redis master over.
FAILOVER_FAULTS = ("master_kill9", "redis_sigstop")


def lost_in_failover(windows: Sequence[tuple[float, float]],
                     records: Mapping[str, Mapping[tuple[str, int], str | None]]) -> Callable[[Ack], bool]:
    """Whether an acknowledged publish nobody got is one a failover lost: acknowledged within a window from a
    master's failover fault to its recovery, and not in its room's history at the end (``records``). Replication
    is asynchronous (docs/concepts/delivery.md "The limits, exactly"): a master stopped, then replaced, runs the
    publishes queued on it when it wakes and answers them, and is demoted before its replica (already master)
    could have them. Such a message is stored nowhere, so no subscriber can be told; one the room's history
    holds is judged as before (a subscriber that read past a stored message is a failure). A message trimmed
    from the history (more than its size came after it) counts as not held: the window keeps that rare."""
    def lost(ack: Ack) -> bool:
        room, mid, acked = ack[0], str(ack[1]), float(ack[3])
        held = {v for v in records.get(room, {}).values() if v is not None}
        return mid not in held and any(start <= acked <= end for start, end in windows)
    return lost


def judge_all(histories: Iterable[tuple[str, str, Sequence[Event], bool]], truths: dict[str, RoomTruth],
              history_size: int, keep: int = 20, acks: Iterable[Ack] = (),
              failover_lost: Callable[[Ack], bool] | None = None) -> Totals:
    """Every subscription ``(name, room, events, alive_at_end)``: the totals, and the first ``keep``
    failures named (a run fails when ``lost``, ``duplicated``, ``out_of_order`` or ``violations`` is not
    empty/zero). ``acks``: the publishers' acknowledgements; each one that reached none of the subscriptions
    live around it is a violation (`unreached`)."""
    t = Totals()
    histories = list(histories)
    t.unreached = unreached(acks, histories, failover_lost, t.lost_in_failover)
    t.violations += t.unreached[:keep]
    # First what every native frame says is where (a Pusher frame is placed by its id, whatever order the
    # subscriptions are judged in).
    for _name, room, events, _alive in histories:
        truth = truths.setdefault(room, RoomTruth())
        for ev in events:
            if ev[0] == "msg" and ev[2] is not None and ev[4] is not None:
                truth.learn(ev[3], ev[2], ev[4])
    for room, truth in truths.items():
        twice = truth.stored_twice()
        t.stored_twice += len(twice)
        t.stored_twice_examples += [f"{room} {m} at {p}" for m, p in list(twice.items())[:3]]
    for name, room, events, alive in histories:
        t.subscriptions += 1
        v = check_subscription(events, truths.setdefault(room, RoomTruth()), history_size, alive)
        t.delivered += v.delivered
        t.lost += len(v.lost)
        t.duplicated += len(v.duplicated)
        t.out_of_order += len(v.out_of_order)
        t.unplaced += v.unplaced
        for why in v.resets:
            key = why.split(" (")[0]
            t.resets[key] = t.resets.get(key, 0) + 1
        for what, items in (("lost", v.lost), ("duplicated", v.duplicated), ("out of order", v.out_of_order)):
            if items and len(t.violations) < keep:
                t.violations.append(f"{name} in {room}: {len(items)} {what}, first {items[:3]}")
        for why in v.violations:
            if len(t.violations) < keep:
                t.violations.append(f"{name} in {room}: {why}")
    return t


class _Reach:
    """One subscription as `unreached` reads it: when it began and ended, and when it was told it may have missed
    messages (``recovered: false``, an epoch change, a Pusher resubscribe)."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.start = math.inf  # its first ``subscribed``
        self.end = math.inf  # its ``end`` (none: alive at the end)
        self.pusher = False
        self.resets: list[float] = []
        #: When it saw its room's history start a new epoch.
        self.epoch_changes: list[float] = []
        epoch: Any = None
        for ev in events:
            if ev[0] == "sub":
                _, t, _offset, ep, recovered, _since = ev
                if self.start == math.inf:
                    self.start = t
                    self.pusher = ep is None
                elif ep is None or not recovered or ep != epoch:
                    self.resets.append(t)
                if epoch is not None and ep is not None and ep != epoch:
                    self.epoch_changes.append(t)
                epoch = ep
            elif ev[0] == "end":
                self.end = min(self.end, ev[1])
        #: Read only for a publish nobody around got: the acknowledged messages it got, in arrival order: when
        #: each arrived, and the latest send time among them so far (non-decreasing: a bisect finds the first
        #: one sent after a given time).
        self._arrived: array[float] | None = None
        self._newest_sent = array("d")

    def got_at(self, offset: int, epoch: str | None, sent: float) -> set[str]:
        """The ids it got after ``sent`` at ``offset`` of ``epoch`` (None: the epoch it was in at ``sent``)."""
        if epoch is None:
            for ev in self.events:
                if ev[1] > sent:
                    break
                if ev[0] in ("sub", "msg") and ev[3] is not None:
                    epoch = ev[3]
        if epoch is None:
            return set()
        return {ev[4] for ev in self.events
                if ev[0] == "msg" and ev[1] > sent and ev[2] == offset and ev[3] == epoch and ev[4] is not None}

    def first_of(self, ids: set[str], sent: float) -> float:
        """When it first got one of ``ids`` after ``sent`` (-inf: never)."""
        return next((ev[1] for ev in self.events if ev[0] == "msg" and ev[1] > sent and ev[4] in ids), -math.inf)

    def passed(self, sent: float, acked: float, sent_of: Mapping[str, float]) -> bool:
        """Whether it went on past a message sent at ``sent`` and acknowledged at ``acked`` with nothing to tell
        it that it might have missed it: it got a message published after ``acked`` (stored after it, so
        delivered after it), and no reset came between the publish and that message."""
        if self._arrived is None:
            self._arrived = array("d")
            newest = -math.inf
            for ev in self.events:
                if ev[0] == "msg" and ev[4] in sent_of:
                    newest = max(newest, sent_of[ev[4]])
                    self._arrived.append(ev[1])
                    self._newest_sent.append(newest)
        i = bisect_right(self._newest_sent, acked)
        if i == len(self._arrived):
            return False
        j = bisect_left(self.resets, sent)
        return j == len(self.resets) or self.resets[j] > self._arrived[i]


def unreached(acks: Iterable[Ack], histories: Iterable[tuple[str, str, Sequence[Event], bool]],
              failover_lost: Callable[[Ack], bool] | None = None, set_aside: list[str] | None = None) -> list[str]:
    """Acknowledged publishes that reached none of the subscriptions live in their room around them, each named
    with its room, epoch, offset and id.

    Live around a publish: subscribed (its first ``subscribed`` arrived) before the publish was sent, not ended
    by then, and still there after it: it got a message published after the acknowledgement, with no
    ``recovered: false``, epoch change or Pusher resubscribe since the publish was sent (such a reset tells the
    client it may have missed messages; a Pusher client cannot be told, and a new epoch of the room's history,
    as native subscribers saw it, counts as its reset). An acknowledged message that no subscription around it
    got, while one live went past it, is a write nobody was told about: a failover gave its offset to another
    message the subscribers already had (docs/concepts/delivery.md "The limits, exactly"), and they read past it.

    A subscription that got another message at the publish's own place (its offset, in the acknowledgement's
    epoch or, the helper's acknowledgement having none, the one the subscription was in when it was sent) heard
    a second dataset: a stopped old master that ran its queued publishes when it resumed, after its replica
    took over and stored this one. What came from it was all sent before the subscription heard that other
    message, so only a message sent after that shows the subscription went past the publish: one sent earlier
    may be the old master's, at offsets the new master gave to this publish and those after it, and the reset
    that tells the subscription (the catch-up that finds the new master's history differs starts a new epoch)
    comes after those."""
    acks = list(acks)
    sent_of = {str(a[1]): float(a[2]) for a in acks}
    rooms: dict[str, list[_Reach]] = {}
    got: dict[str, list[_Reach]] = {}  # id -> the subscriptions that got it
    for _name, room, events, _alive in histories:
        r = _Reach(events)
        rooms.setdefault(room, []).append(r)
        for ev in events:
            if ev[0] == "msg" and ev[4] in sent_of:
                got.setdefault(ev[4], []).append(r)
    for subs in rooms.values():
        # A Pusher client cannot be told: a new epoch of its room's history, as native subscribers saw it, ends
        # what it is owed (its frames are judged by epoch the same way, `check_subscription`).
        changes = sorted(t for r in subs for t in r.epoch_changes)
        for r in subs:
            if r.pusher and changes:
                r.resets = sorted(r.resets + changes)
    out: list[str] = []
    for ack in acks:
        room, mid, sent, acked, epoch, offset = ack
        if any(r.start < sent < r.end for r in got.get(mid, ())):
            continue
        around = [r for r in rooms.get(room, ()) if r.start < sent < r.end]
        live = [r for r in around if r.passed(sent, acked, sent_of)]
        if live and offset is not None:  # rare: only for what would fail the run
            other = {i for r in around for i in r.got_at(offset, epoch, sent) if i != mid}
            live = [r for r in live if r.passed(sent, max(acked, r.first_of(other, sent)), sent_of)]
        if live:
            text = (f"{room} {mid} acknowledged at (epoch {epoch}, offset {offset}) reached none of the {len(live)} "
                    f"subscription(s) live around it (sent {sent:.1f} s, acknowledged {acked:.1f} s), no reset "
                    "to explain it")
            if failover_lost is not None and failover_lost(ack):
                if set_aside is not None:
                    set_aside.append(text + "; stored nowhere: lost in a failover (documented limit)")
            else:
                out.append(text)
    return out


def _seen_at(histories: Iterable[tuple[str, str, Sequence[Event], bool]]) -> dict[str, dict[tuple[str, int], set[str]]]:
    """room -> (epoch, offset) -> every id a subscription got there (native frames: they carry their place)."""
    out: dict[str, dict[tuple[str, int], set[str]]] = {}
    for _name, room, events, _alive in histories:
        for ev in events:
            if ev[0] == "msg" and ev[2] is not None and ev[4] is not None:
                out.setdefault(room, {}).setdefault((ev[3], ev[2]), set()).add(ev[4])
    return out


def split_stored_twice(twice: Mapping[tuple[str, str], Sequence[tuple[str, int]]],
                       records: Mapping[str, Mapping[tuple[str, int], str | None]],
                       histories: Iterable[tuple[str, str, Sequence[Event], bool]] = ()) -> tuple[list[str], list[str]]:
    """Publishes subscribers got at two places ``(room, id) -> [(epoch, offset), ...]``, split into stored twice
    (a defect) and the other kind: one publish run on two datasets a failover split apart, its first write lost
    after it had gone out live (the old master ran the publish as it came back, before it learnt it was
    demoted), which the client's retry then stored on the new master (docs/concepts/delivery.md "The limits,
    exactly": a failover can lose the last writes). Each entry names the room, the id and its places.

    First by what the room's history holds at the end (``records``: room -> ``(epoch, offset) -> id``, read
    from the server): the id at more than one place is stored twice; at one place, another message at the
    other, the lost-first-write kind. When the record does not settle it (it no longer reaches back to every
    place), by what the subscriptions saw (``histories``, as `judge_all` takes them): the places in two epochs
    (the room's history was reset between them: two datasets), or another id a subscription got at one of them
    (two datasets disagreed there), is the lost-first-write kind; otherwise nothing clears it: stored twice."""
    seen = _seen_at(histories)
    stored: list[str] = []
    lost_first: list[str] = []
    for (room, mid), places in sorted(twice.items()):
        rec = records.get(room, {})
        covered = all(p in rec for p in places)
        held = [p for p in places if rec.get(p) == mid]
        what = f"{room} {mid} at {list(places)}"
        others_seen = {p: sorted(ids - {mid}) for p in places
                       if (ids := seen.get(room, {}).get(p, set())) - {mid}}
        if covered and len(held) == 1:
            others = {p: rec[p] for p in places if p not in held}
            lost_first.append(f"{what}; the record holds it at {held[0]}, and {others} instead")
        elif covered and held:
            stored.append(what)
        elif len({epoch for epoch, _ in places}) > 1:
            lost_first.append(f"{what}; in two epochs (the room's history was reset between them)")
        elif others_seen:
            lost_first.append(f"{what}; other subscriptions got {others_seen} there")
        else:
            stored.append(what + ("" if covered else "; the record does not cover every place"))
    return stored, lost_first


# -- counts, members ----------------------------------------------------------------------------------


def count_errors(truth: Mapping[str, tuple[int, int]], seen: Mapping[str, tuple[int, int] | None]) -> list[str]:
    """Rooms whose observed ``(connections, tabs)`` differ from the truth the clients know."""
    return [f"{room}: {seen.get(room)} != truth {want}" for room, want in sorted(truth.items())
            if seen.get(room) != want]


def member_errors(truth: Mapping[str, set[str]], seen: Mapping[str, set[str] | None]) -> list[str]:
    out = []
    for room, want in sorted(truth.items()):
        got = seen.get(room)
        if got != want:
            extra = sorted((got or set()) - want)[:3]
            absent = sorted(want - (got or set()))[:3]
            out.append(f"{room}: members +{extra} -{absent}")
    return out


# -- webhooks --------------------------------------------------------------------------------------------

PAIRS = {"channel_occupied": "channel_vacated", "member_added": "member_removed"}


def check_webhooks(events: Iterable[Mapping[str, Any]], final_rooms: Mapping[str, bool],
                   final_members: Mapping[str, set[str]]) -> dict[str, Any]:
    """Webhook events as the receiver got them (retries included, arrival order): each id handled once
    (``duplicates`` are the receiver's to drop, counted); per room occupied/vacated alternate from
    occupied, per (room, user) added/removed from added; the last transition of each matches the
    truth at the end (``final_rooms``: room -> occupied; ``final_members``: room -> users present)."""
    seen: set[str] = set()
    dups = 0
    state: dict[tuple[str, str | None], str] = {}
    violations: list[str] = []
    handled = 0
    for e in events:
        if e["id"] in seen:
            dups += 1
            continue
        seen.add(e["id"])
        name = e["name"]
        if name not in ("channel_occupied", "channel_vacated", "member_added", "member_removed"):
            continue
        handled += 1
        member = name.startswith("member_")
        key = (e["channel"], e.get("user_id") if member else None)
        up = name in PAIRS
        was = state.get(key)
        if up and was is not None and was in PAIRS:
            violations.append(f"{key}: {name} twice without {PAIRS[name]} between")
        if not up and (was is None or was not in PAIRS):
            violations.append(f"{key}: {name} without an open {'member_added' if member else 'channel_occupied'}")
        state[key] = name
    for room, occupied in sorted(final_rooms.items()):
        now = state.get((room, None)) == "channel_occupied"
        if now != occupied:
            violations.append(f"{room}: webhooks say {'occupied' if now else 'vacant'}, truth "
                              f"{'occupied' if occupied else 'vacant'}")
    for (room, user), last in sorted(state.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if user is None:
            continue
        present = user in final_members.get(room, set())
        if (last == "member_added") != present:
            violations.append(f"{room}/{user}: webhooks say {last}, truth {'present' if present else 'gone'}")
    for room, users in final_members.items():
        for user in users:
            if state.get((room, user)) != "member_added":
                violations.append(f"{room}/{user}: present, but no member_added open")
    return {"events": handled, "duplicates": dups, "violations": violations}


# -- figures -------------------------------------------------------------------------------------------


def p50_max(xs: Sequence[float]) -> tuple[float | None, float | None]:
    return (statistics.median(xs), max(xs)) if xs else (None, None)


def rss_growth(samples: Sequence[tuple[float, float]], warmup_s: float, window_s: float = 60.0) -> float | None:
    """Relative growth of RSS from just after the warm-up to the end: the medians of the first and last
    ``window_s`` of samples after ``warmup_s`` (medians, so one GC swing is not growth). None when too
    short to say."""
    after = [(t, r) for t, r in samples if t >= warmup_s]
    if len(after) < 4:
        return None
    t0, t1 = after[0][0], after[-1][0]
    if t1 - t0 < 2 * window_s:
        window_s = (t1 - t0) / 3
    first = [r for t, r in after if t <= t0 + window_s]
    last = [r for t, r in after if t >= t1 - window_s]
    return statistics.median(last) / statistics.median(first) - 1


def fd_leaks(baseline: Mapping[str, int], after: Mapping[str, int], slack: int = 8) -> list[str]:
    """Processes whose open descriptors did not come back to within ``slack`` of their baseline (a pool
    may keep a few Redis connections it opened under load)."""
    return [f"{name}: {baseline[name]} -> {after.get(name)}" for name in sorted(baseline)
            if after.get(name) is not None and after[name] > baseline[name] + slack]
