"""How each kind of step moves a group of enrollments (STYLE.md 4: an exhaustive ``match``).

``StepRunner`` is mixed into ``JourneyEngine``: every handler takes all the enrollments that
stand on the same step and moves them together (one policy query, one contact query, one insert
of messages), so a tick stays set-based.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

from sqlalchemy import (
    Table,
    bindparam,
    select,
    update,
)
from sqlalchemy.orm import Session

from tidings.config import Settings
from tidings.crm.db import among, insert_rows
from tidings.crm.models import (
    Assignment,
    Event,
    Experiment,
    MessageStatus,
)
from tidings.crm.topics import load_topics
from tidings.crm.types import as_utc
from tidings.journeys import schema as s
from tidings.journeys.experiments import CONTROL, HOLDOUT, in_control, in_test, variant_for
from tidings.journeys.policy import Candidate, Rules, gate
from tidings.journeys.state import (
    Item,
    TickStats,
    Version,
    as_date,
    assignments_t,
    contacts_t,
    matches,
    parse_cap,
    parse_quiet,
    zone_of,
)


class StepRunner:
    """The step handlers of ``JourneyEngine``, which provides ``db``, ``settings``, ``_catalog``."""

    db: Any
    settings: Settings

    def _catalog(self) -> Any:
        raise NotImplementedError

    def _run_step(
        self,
        session: Session,
        step: s.Step,
        group: list[Item],
        now: datetime,
        messages: list[dict[str, Any]],
        stats: TickStats,
    ) -> None:
        match step:
            case s.EmailStep() | s.SmsStep():
                self._send(session, step, group, now, messages, stats)
            case s.WaitStep():
                for item in group:
                    if self._woken(item, step.id):
                        item.go(item.version.after(step.id))
                    else:
                        self._wait(item, step.id, now, now + timedelta(seconds=step.duration))
            case s.WaitUntilStep():
                self._wait_until(session, step, group, now)
            case s.WaitForEventStep():
                self._wait_for_event(session, step, group, now)
            case s.WaitForSegmentStep():
                self._wait_for_segment(session, step, group, now)
            case s.BranchStep():
                self._branch(session, step, group, now)
            case s.SplitStep():
                weights = [(str(n), p.weight) for n, p in enumerate(step.paths)]
                for item in group:
                    chosen = variant_for(f"{item.version.name}.{step.id}", item.contact_id, weights)
                    item.go(step.paths[int(chosen)].next)
            case s.UpdateContactStep():
                self._update_contacts(session, step, group, now)
                for item in group:
                    stats.updated.setdefault(item.contact_id, set()).update(step.set)
                    item.go(item.version.after(step.id))
            case s.WebhookStep():
                self._webhook(step, group, now)
            case s.ExitStep():
                for item in group:
                    item.finish("exit_step")
            case _:
                assert_never(step)

    # -- waits ---------------------------------------------------------------------------
    @staticmethod
    def _woken(item: Item, step_id: str) -> bool:
        waiting = item.context.get("waiting")
        return isinstance(waiting, dict) and waiting.get("step") == step_id

    @staticmethod
    def _wait(item: Item, step_id: str, now: datetime, until: datetime) -> None:
        item.context["waiting"] = {
            "step": step_id,
            "since": now.isoformat(),
            "until": until.isoformat(),
        }
        item.park(until)

    @staticmethod
    def _wait_start(item: Item, step_id: str, now: datetime) -> datetime:
        """When a wait for an event began: at the event that put the contact on this step when
        it is the journey's first (an order placed a minute after the abandoned cart, before
        the first tick, ends the wait), else when the contact got here (now)."""
        if step_id != item.version.journey.steps[0].id or item.context.get("entry_wait"):
            return now  # a later step, or back here through a loop: from now
        item.context["entry_wait"] = True
        trigger = item.context.get("trigger") or {}
        when = trigger.get("occurred_at") if isinstance(trigger, dict) else None
        start = datetime.fromisoformat(when) if isinstance(when, str) else item.entered_at
        return min(start, now)

    @staticmethod
    def _done_waiting(item: Item, step_id: str | None) -> None:
        item.context.pop("waiting", None)
        item.go(step_id)

    def _wait_until(
        self, session: Session, step: s.WaitUntilStep, group: list[Item], now: datetime
    ) -> None:
        contacts = self._contacts(session, [i for i in group if not self._woken(i, step.id)])
        for item in group:
            if self._woken(item, step.id):
                self._done_waiting(item, item.version.after(step.id))
                continue
            row = contacts[item.contact_id]
            zone = zone_of(row["timezone"], self.settings.default_timezone)
            if step.attribute:
                day = as_date((row["attributes"] or {}).get(step.attribute))
                if day is None:
                    item.finish("missing_attribute")
                    continue
                if step.offset:
                    from tidings.segments.rules import parse_duration

                    sign = -1 if step.offset.strip().startswith("-") else 1
                    day += timedelta(
                        seconds=sign * parse_duration(step.offset.lstrip("+-").strip())
                    )
                due = datetime.combine(day, step.at, tzinfo=zone)
            else:
                local = now.astimezone(zone)
                due = datetime.combine(local.date(), step.at, tzinfo=zone)
                if due <= now:
                    due = datetime.combine(local.date() + timedelta(days=1), step.at, tzinfo=zone)
            if due.astimezone(UTC) <= now:
                self._done_waiting(item, item.version.after(step.id))
            else:
                self._wait(item, step.id, now, due.astimezone(UTC))

    def _wait_for_event(
        self, session: Session, step: s.WaitForEventStep, group: list[Item], now: datetime
    ) -> None:
        waking = [i for i in group if self._woken(i, step.id)]
        for item in group:
            if item not in waking:
                start = self._wait_start(item, step.id, now)
                self._wait(item, step.id, start, start + timedelta(seconds=step.timeout))
        if not waking:
            return
        since = {i.id: datetime.fromisoformat(i.context["waiting"]["since"]) for i in waking}
        rows = session.execute(
            select(Event.contact_id, Event.occurred_at, Event.properties).where(
                Event.contact_id.in_({i.contact_id for i in waking}),
                Event.name == step.event,
                Event.occurred_at >= min(since.values()),
            )
        ).all()
        for item in waking:
            hit = any(
                r.contact_id == item.contact_id
                and r.occurred_at >= since[item.id]
                and matches(r.properties, step.where)
                for r in rows
            )
            until = datetime.fromisoformat(item.context["waiting"]["until"])
            if hit:
                self._done_waiting(item, item.version.after(step.id))
            elif now >= until:
                self._done_waiting(item, step.on_timeout)
            else:  # woken early by something else: keep waiting
                item.park(until)

    def _wait_for_segment(
        self, session: Session, step: s.WaitForSegmentStep, group: list[Item], now: datetime
    ) -> None:
        """Members now (the segment's statement for this group, one query) go on; the others
        wait until ``timeout``. A live change of the segment wakes them early
        (``segments.live``), and they are looked at again here."""
        members = self._members(session, step.segment, [i.contact_id for i in group], now)
        for item in group:
            if (item.contact_id in members) == (step.until == "in"):
                self._done_waiting(item, item.version.after(step.id))
                continue
            if self._woken(item, step.id):
                until = datetime.fromisoformat(item.context["waiting"]["until"])
            else:
                start = self._wait_start(item, step.id, now)
                until = start + timedelta(seconds=step.timeout)
            if now >= until:
                self._done_waiting(item, step.on_timeout)
            else:
                self._wait(item, step.id, now, until)

    def _members(
        self, session: Session, segment: str, contact_ids: list[int], now: datetime
    ) -> set[int]:
        from tidings.segments.membership import segment_statement, tune_for_segments

        tune_for_segments(session)
        query = segment_statement(
            segment, catalog=self._catalog(), dialect=self.db.dialect.name, now=now
        )
        ids = query.subquery()
        return set(session.scalars(select(ids.c.id).where(ids.c.id.in_(contact_ids))))

    # -- decisions -----------------------------------------------------------------------
    def _branch(
        self, session: Session, step: s.BranchStep, group: list[Item], now: datetime
    ) -> None:
        from tidings.segments.compile import compile_core
        from tidings.segments.membership import tune_for_segments
        from tidings.segments.rules import Segment

        tune_for_segments(session)  # SET LOCAL: work_mem for the rules, no JIT
        pending = {i.contact_id: i for i in group}
        for n, branch in enumerate(step.branches):
            if not pending:
                break
            segment = Segment(name=f"{group[0].version.name}.{step.id}.{n}", rule=branch.when)
            query = compile_core(
                self._catalog().core(segment), dialect=self.db.dialect.name, now=now
            )
            ids = query.subquery()
            hits = set(session.scalars(select(ids.c.id).where(ids.c.id.in_(pending))))
            for cid in hits:
                pending.pop(cid).go(branch.next)
        for item in pending.values():
            item.go(step.otherwise)

    def _update_contacts(
        self, session: Session, step: s.UpdateContactStep, group: list[Item], now: datetime
    ) -> None:
        from tidings.templates.render import contact_context, make_environment

        env = make_environment(autoescape=False)
        contacts = self._contacts(session, group)
        rows = []
        for item in group:
            row = contacts[item.contact_id]
            values = {"contact": contact_context(row), "trigger": item.context.get("trigger", {})}
            attributes = dict(row["attributes"] or {})
            for key, value in step.set.items():
                attributes[key] = (
                    env.from_string(value).render(values) if isinstance(value, str) else value
                )
            rows.append({"b_id": item.contact_id, "b_attributes": attributes, "b_now": now})
        session.execute(
            update(contacts_t)
            .where(contacts_t.c.id == bindparam("b_id"))
            .values(attributes=bindparam("b_attributes"), updated_at=bindparam("b_now")),
            rows,
        )

    def _webhook(self, step: s.WebhookStep, group: list[Item], now: datetime) -> None:
        import httpx

        for item in group:
            visit = item.visit(step.id)
            body = {
                **step.body,
                "journey": item.version.name,
                "step": step.id,
                "contact_id": item.contact_id,
                "trigger": item.context.get("trigger", {}),
            }
            headers = {**step.headers, "Idempotency-Key": f"{item.id}:{step.id}:{visit}"}
            try:
                response = httpx.request(
                    step.method, step.url, json=body, headers=headers, timeout=10.0
                )
                retry = response.status_code == 429 or response.status_code >= 500
                error = None if response.is_success else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                retry, error = True, f"{type(exc).__name__}: {exc}"
            attempts = item.context.setdefault("webhook_attempts", {})
            if retry and attempts.get(step.id, 0) < 5:
                attempts[step.id] = attempts.get(step.id, 0) + 1
                item.context["visits"][step.id] -= 1  # the same call, tried again
                item.park(now + timedelta(seconds=30 * 2 ** attempts[step.id]))
                continue
            attempts.pop(step.id, None)
            if error:
                item.context.setdefault("errors", []).append(f"{step.id}: {error}")
            item.go(item.version.after(step.id))

    # -- sends ---------------------------------------------------------------------------
    def _contacts(self, session: Session, items: Sequence[Item]) -> dict[int, dict[str, Any]]:
        ids = {i.contact_id for i in items}
        if not ids:
            return {}
        result = session.execute(
            select(
                contacts_t.c.id,
                contacts_t.c.email,
                contacts_t.c.phone,
                contacts_t.c.timezone,
                contacts_t.c.locale,
                contacts_t.c.first_name,
                contacts_t.c.last_name,
                contacts_t.c.external_id,
                contacts_t.c.attributes,
            ).where(among(session, contacts_t.c.id, ids))
        )
        # zip with the names: a third of what ``.mappings()`` and ``dict(row)`` cost a row
        names = list(result.keys())
        return {row[0]: dict(zip(names, row, strict=True)) for row in result}

    def rules_for(self, journey: s.Journey) -> Rules:
        cap_max, cap_seconds = parse_cap(self.settings.frequency_cap)
        quiet_start, quiet_end = parse_quiet(self.settings.quiet_hours)
        cap = journey.settings.frequency_cap
        if cap is False:
            cap_max = None
        elif cap is not None:
            cap_max, cap_seconds = cap.max, cap.per
        quiet = journey.settings.quiet_hours
        if quiet is False:
            quiet_start = quiet_end = None
        elif quiet is not None:
            quiet_start, quiet_end = quiet.start, quiet.end
        return Rules(cap_max, cap_seconds, quiet_start, quiet_end, self.settings.default_timezone)

    def _send(
        self,
        session: Session,
        step: s.EmailStep | s.SmsStep,
        group: list[Item],
        now: datetime,
        messages: list[dict[str, Any]],
        stats: TickStats,
    ) -> None:
        version = group[0].version
        journey = version.journey
        purpose = step.purpose or (
            "transactional" if journey.settings.transactional else "marketing"
        )
        variants, awaiting = self._assign(session, version, step, group, now)
        for item in group:  # an auto-winner's rest, before the decision: it waits at the step
            if item.id in awaiting:
                item.park(awaiting[item.id])
                stats.awaiting_winner[step.id] += 1
        group = [item for item in group if item.id not in awaiting]
        if not group:
            return
        contacts = self._contacts(session, group)
        topic = journey.topic
        out = self._held_out(session, version, group)
        templates = {
            v.name: v.template
            for v in (step.experiment.variants if step.experiment else [])
            if v.template
        }
        candidates = []
        for item in group:
            if variants.get(item.id) == HOLDOUT or item.id in out:
                continue
            row = contacts[item.contact_id]
            address = row["email"] if step.type == "email" else row["phone"]
            candidates.append(
                Candidate(
                    item.id,
                    item.contact_id,
                    step.type,
                    purpose,
                    address,
                    row["timezone"],
                    topic if purpose == "marketing" else None,
                )
            )
        pending: dict[int, int] = defaultdict(int)
        for m in messages:
            if m["purpose"] == "marketing" and m["status"] == MessageStatus.QUEUED.value:
                pending[m["contact_id"]] += 1
        decisions = gate(
            session=session,
            candidates=candidates,
            rules=self.rules_for(journey),
            now=now,
            pending=pending,
            topics=load_topics(self.settings.project_dir) if topic else None,
        )
        queued: list[int] = []  # enrollments that got a message (their runs get seed copies)
        for item in group:
            decision = decisions.get(item.id)
            if decision is not None and decision.action == "defer":
                assert decision.until is not None
                item.park(decision.until)
                stats.deferred += 1
                stats.deferred_steps[step.id] += 1
                continue
            visit = item.visit(step.id)
            if decision is None:  # a holdout or the control group: no message, counted there
                reason = out.get(item.id, HOLDOUT)
                stats.held[reason] += 1
                stats.held_out_steps[(step.id, reason)] += 1
                item.go(item.version.after(step.id))
                continue
            row = contacts[item.contact_id]
            held = decision.action == "hold"
            if held:
                stats.held[str(decision.reason)] += 1
            else:
                queued.append(item.id)
            messages.append(
                {
                    "idempotency_key": f"{version.id}:{item.id}:{step.id}:{visit}",
                    "contact_id": item.contact_id,
                    "journey_id": version.id,
                    "enrollment_id": item.id,
                    "step_id": step.id,
                    "variant": variants.get(item.id),
                    "channel": step.type,
                    "purpose": purpose,
                    "template": templates.get(variants.get(item.id) or "", step.template),
                    "to_address": (row["email"] if step.type == "email" else row["phone"]) or "",
                    "subject": None,
                    "status": MessageStatus.HELD.value if held else MessageStatus.QUEUED.value,
                    "error": decision.reason if held else None,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "meta": {
                        **({"context": step.context} if step.context else {}),
                        **({"topic": topic} if topic and purpose == "marketing" else {}),
                    },
                }
            )
            item.go(item.version.after(step.id))
        if journey.seeds and isinstance(journey.trigger, s.ScheduleTrigger):
            from tidings.journeys.testsend import queue_seed_copies

            queue_seed_copies(
                session,
                version_id=version.id,
                journey=journey,
                step=step,
                enrollment_ids=queued,
                now=now,
            )

    def _held_out(self, session: Session, version: Version, group: list[Item]) -> dict[int, str]:
        """Who receives nothing from this journey at any send step: its control group, and
        whoever an experiment of the journey put in its holdout (at this step or before)."""
        journey = version.journey
        out: dict[int, str] = {}
        if journey.settings.control_group:
            for item in group:
                if in_control(version.name, item.contact_id, journey.settings.control_group):
                    out[item.id] = CONTROL
        rest = {i.contact_id: i.id for i in group if i.id not in out}
        if rest and any(getattr(step, "experiment", None) for step in journey.steps):
            held = session.scalars(
                select(Assignment.contact_id)
                .join(Experiment, Experiment.id == Assignment.experiment_id)
                .where(
                    Experiment.journey_name == version.name,
                    Assignment.variant == HOLDOUT,
                    Assignment.contact_id.in_(list(rest)),
                )
            )
            for contact_id in held:
                out[rest[contact_id]] = HOLDOUT
        return out

    def _assign(
        self,
        session: Session,
        version: Version,
        step: s.EmailStep | s.SmsStep,
        group: list[Item],
        now: datetime,
    ) -> tuple[dict[int, str], dict[int, datetime]]:
        """Each enrollment's variant (recorded in ``assignments``), and, for an auto-winner
        experiment not decided yet, the enrollments of the rest with the time they wait until
        (the decision wakes them: ``analytics.auto_winner``)."""
        experiment = step.experiment
        if experiment is None:
            return {}, {}
        name = experiment.name or f"{version.name}.{step.id}"
        weights = [(v.name, v.weight) for v in experiment.variants]
        table: Table = Experiment.__table__  # type: ignore[assignment]
        insert_rows(
            session,
            table,
            [
                {
                    "name": name,
                    "journey_name": version.name,
                    "step_id": step.id,
                    "variants": {v.name: {"weight": v.weight} for v in experiment.variants},
                    "holdout_percent": experiment.holdout,
                    "status": "running",
                    "created_at": now,
                }
            ],
        )
        experiment_id, status, winner, started = session.execute(
            select(
                Experiment.id, Experiment.status, Experiment.winner, Experiment.created_at
            ).where(Experiment.name == name)
        ).one()
        auto = experiment.auto_winner
        chosen: dict[int, str] = {}
        awaiting: dict[int, datetime] = {}
        tested: list[Item] = []
        for i in group:
            if auto is None or in_test(name, i.contact_id, auto.test_share):
                chosen[i.id] = variant_for(name, i.contact_id, weights, holdout=experiment.holdout)
                tested.append(i)
            elif status == "running":
                awaiting[i.id] = _decision_due(as_utc(started), auto, now)
            elif winner is not None:
                chosen[i.id] = winner
            else:  # fallback keep_split: the rest is split by the weights, unassigned
                chosen[i.id] = variant_for(name, i.contact_id, weights)
        insert_rows(
            session,
            assignments_t,
            [
                {
                    "experiment_id": experiment_id,
                    "contact_id": i.contact_id,
                    "variant": chosen[i.id],
                    "assigned_at": now,
                }
                for i in tested
            ],
        )
        return chosen, awaiting


def _decision_due(started: datetime, auto: s.AutoWinner, now: datetime) -> datetime:
    """Until when the rest of an auto-winner waits: the deadline, or a day at a time when the
    decision waits for a sample size (a decision wakes the rest at once)."""
    if auto.decide_after is not None:
        return max(started + timedelta(seconds=auto.decide_after), now + timedelta(seconds=1))
    return now + timedelta(days=1)
