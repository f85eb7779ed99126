"""Continuous-batching generation engine.

One thread owns the model runner. Each iteration it (1) drops cancelled and timed-out
sequences, (2) prefills at most `prefill_tokens` prompt tokens of waiting requests (chunked
prefill), and (3) runs ONE batched decode step for every active sequence. Sequences join
and leave between steps, so a short request never waits for a long one to finish.

Chunked prefill: a prompt is prefilled in chunks of at most `prefill_tokens` tokens, one
token budget per engine step, interleaved with the decode steps; each chunk after the first
attends to the row's cached prefix. So a decode gap carries at most one budget of prefill,
never several whole prompts. One sequence is prefilled at a time, in the KV row just after
the decoding rows (row `len(active)`); when its last chunk is done it samples its first
token and joins the decode batch in that row. While nothing decodes, up to `prefill_chunk`
prompts are prefilled whole (nobody waits on them).

The engine is transport-free: requests come in through `submit`, results go out through
each request's `emit` callback. It never blocks the event loop (ONNX Runtime releases
the GIL while it computes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from service.engine.observer import EngineObserver
from service.engine.prefix_cache import Choice, HostStore, PrefixCache
from service.engine.request import FinishEvent, GenerationRequest, TokenEvent
from service.engine.runner import ModelRunner
from service.engine.sampling import token_logprobs
from service.engine.sequence import ActiveSequence
from service.engine.speculative import SpecConfig, SpecCost, accepted_prefix
from service.errors import QueueFull, Unavailable

log = logging.getLogger("kiln.engine")


class GenerationEngine:
    def __init__(
        self,
        runner: ModelRunner,
        decode: Callable[[Sequence[int]], str],
        eos_token_ids: Collection[int],
        vocab_size: int,
        max_queue: int,
        prefill_chunk: int = 8,
        prefill_tokens: int = 16,
        observer: EngineObserver | None = None,
        retry_after_s: int = 1,
        name: str = "lm",
        step_delay_s: float = 0.0,
        prefix_cache: bool = False,
        prefix_cache_shared: bool = False,
        speculative: SpecConfig | None = None,
        prefix_cache_bytes: int = 0,
    ) -> None:
        self.runner = runner
        self.name = name
        self._decode_text = decode
        self.eos = frozenset(int(t) for t in eos_token_ids)  # any of them ends a sequence
        self.vocab = vocab_size
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk  # most prompts started per step
        self.prefill_tokens = max(1, prefill_tokens)  # most prompt tokens prefilled per step
        self.retry_after_s = retry_after_s
        self.obs = observer or EngineObserver()
        self.step_delay_s = step_delay_s  # fault injection only
        self._waiting: deque[GenerationRequest] = deque()
        self._active: list[ActiveSequence] = []
        self._prefilling: ActiveSequence | None = None  # in KV row len(self._active)
        self._mask_pool: ThreadPoolExecutor | None = None  # structured outputs only
        # n-gram speculation needs a runner that scores a guess in one call (`verify`).
        self.spec = speculative if speculative is not None and runner.can_verify else None
        self.spec_cost = SpecCost()  # verify call against decode step, as measured here
        reuse = runner.prefix_reuse if prefix_cache else "none"
        self.cache = (
            PrefixCache(runner.max_batch, shared=prefix_cache_shared, partial=reuse == "partial")
            if reuse in ("partial", "whole")
            else None
        )
        rows = runner.reserve_parking(prefix_cache_bytes) if reuse == "partial" and prefix_cache_bytes > 0 else 0
        self.host = HostStore(rows, shared=prefix_cache_shared) if rows else None  # KILN_PREFIX_CACHE_BYTES
        self._cv = threading.Condition()
        self._stopping = False
        self._draining = False
        self._thread = threading.Thread(target=self._loop, name=f"kiln-engine-{name}", daemon=True)

    # ---- control (any thread) ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._mask_pool is not None:
            self._mask_pool.shutdown(wait=False)

    def begin_drain(self) -> None:
        with self._cv:
            self._draining = True

    @property
    def busy(self) -> int:
        """Requests admitted or waiting."""
        with self._cv:
            return self.slots_in_use + len(self._waiting)

    @property
    def slots_in_use(self) -> int:
        return len(self._active) + (self._prefilling is not None)

    def submit(self, req: GenerationRequest) -> None:
        with self._cv:
            if self._draining or self._stopping:
                self.obs.rejected(self.name, "draining")
                raise Unavailable("server is shutting down; retry on another replica", code="draining")
            free = self.runner.max_batch - self.slots_in_use
            if len(self._waiting) >= self.max_queue + max(free, 0):
                self.obs.rejected(self.name, "queue_full")
                raise QueueFull(
                    f"generation queue is full ({self.max_queue} waiting, KILN_MAX_QUEUE); retry later",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._waiting.append(req)
            self.obs.queue_depth(self.name, len(self._waiting))
            self._cv.notify()

    # ---- engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._active and self._prefilling is None:
                    self._cv.wait()
                if self._stopping:
                    break
            try:
                self._reap()
                self._prefill()
                if self._active:
                    self._step()
            except Exception as exc:  # a model failure must not kill the loop or hang clients
                log.exception("engine step failed")
                self._drop_prefilling("error", f"inference failed: {exc}")
                for row in range(len(self._active) - 1, -1, -1):
                    self._finish(row, "error", f"inference failed: {exc}")
        self._abort_all("server stopped")

    def _next_waiting(self) -> GenerationRequest | None:
        with self._cv:
            if not self._waiting or self.runner.max_batch - len(self._active) <= 0:
                return None
            req = self._waiting.popleft()
            self.obs.queue_depth(self.name, len(self._waiting))
            return req

    def _prefill(self) -> None:
        """Spend this step's prefill budget: chunks of the prompt(s) being admitted.

        While nothing decodes nobody waits on a prefill: up to `prefill_chunk` prompts are
        prefilled whole and their first tokens are sampled together afterwards, so no token
        gap of theirs carries another's prefill. Otherwise at most `prefill_tokens` tokens go.
        """
        idle = not self._active
        budget = None if idle else self.prefill_tokens  # None: no limit
        joined: list[tuple[int, np.ndarray]] = []  # (row, logits) of prompts done while idle
        started = 0
        try:
            while budget is None or budget > 0:
                seq = self._prefilling
                if seq is None:
                    if started >= self.prefill_chunk:
                        break
                    req = self._next_waiting()
                    if req is None:
                        break
                    started += 1
                    if req.cancelled.is_set() or not req.prompt_ids:
                        now = time.monotonic()
                        reason, msg = ("cancelled", "") if req.cancelled.is_set() else ("error", "empty prompt")
                        waited = now - req.created
                        req.emit(FinishEvent(reason, len(req.prompt_ids), 0, None, waited, waited, msg))
                        continue
                    seq = ActiveSequence(req, self._decode_text, self.vocab, self.eos, self.spec)
                    self.obs.queue_time(self.name, seq.admitted - req.created)
                    self._place(seq)
                    self._prefilling = seq
                    self.obs.slots(self.name, self.slots_in_use, self.runner.max_batch)
                prompt = seq.req.prompt_ids
                take = len(prompt) - seq.prefilled
                if budget is not None:
                    take = min(take, budget)
                    budget -= take
                row = len(self._active)
                logits = self.runner.extend(row, prompt[seq.prefilled : seq.prefilled + take])
                seq.prefilled += take
                if seq.prefilled < len(prompt):
                    continue
                self._prefilling = None
                self._active.append(seq)
                if idle:
                    joined.append((row, logits))
                else:
                    self._accept(row, logits)
        finally:
            # Backwards, so a sequence finishing at once (moving the last row into its hole) is safe.
            for row, logits in reversed(joined):
                self._accept(row, logits)

    def _place(self, seq: ActiveSequence) -> None:
        """Seat an admitted sequence in row len(active), on a cached prefix when one fits."""
        if self.cache is None:
            return  # the row was released when its last sequence left: it starts empty
        row = len(self._active)
        prompt = seq.req.prompt_ids
        choice = self.cache.choose(range(row, self.runner.max_batch), prompt, seq.req.tenant)
        if self.host is not None:
            self._park(choice)
        self._swap(choice.row, row)
        reuse = self._restore(row, prompt, seq.req.tenant, choice.reuse) if self.host is not None else 0
        if not reuse:
            self.runner.truncate(row, choice.reuse)
            reuse = choice.reuse
        seq.prefilled = seq.cached = reuse
        self.obs.prefix_cache(self.name, len(prompt), reuse)

    def _park(self, choice: Choice) -> None:
        """The host tier: what the chosen slot is about to lose goes to a host row first."""
        assert self.host is not None
        evicted = choice.evicted
        if evicted is not None and len(evicted.tokens) > choice.reuse:
            slot = self.host.slot_for(evicted)
            self.runner.park(choice.row, slot, len(evicted.tokens))
            self.host.put(slot, evicted)
            self.obs.prefix_host(self.name, "parked", len(evicted.tokens))

    def _restore(self, row: int, prompt: list[int], tenant: str, beat: int) -> int:
        """The longest parked match copied into `row` when it is longer than `beat` (the slot's own
        match); the positions restored, or 0."""
        assert self.host is not None
        slot, reuse = self.host.lookup(prompt, tenant)
        if reuse <= beat:
            return 0
        self.runner.unpark(slot, row, reuse)
        self.host.restored(slot)
        self.obs.prefix_host(self.name, "restored", reuse)
        return reuse

    def _swap(self, a: int, b: int) -> None:
        if a != b:
            self.runner.swap_rows(a, b)
            assert self.cache is not None
            self.cache.swap(a, b)

    def _leave(self, row: int, seq: ActiveSequence, keep: bool) -> None:
        """Row `row` is free now: with prefix caching it keeps the sequence's positions."""
        if self.cache is None or not keep:
            self.runner.release_row(row)
            if self.cache is not None:
                self.cache.forget(row)
            return
        self.cache.retain(row, seq.tokens[: self.runner.length(row)], seq.req.tenant)

    def _drop_prefilling(self, reason: str, message: str = "") -> None:
        seq = self._prefilling
        if seq is None:
            return
        self._prefilling = None
        self._leave(len(self._active), seq, keep=reason != "error")
        self.obs.slots(self.name, self.slots_in_use, self.runner.max_batch)
        now = time.monotonic()
        seq.req.emit(
            FinishEvent(
                reason=reason,
                prompt_tokens=len(seq.req.prompt_ids),
                completion_tokens=0,
                ttft_s=None,
                total_s=now - seq.req.created,
                queue_s=seq.admitted - seq.req.created,
                message=message,
            )
        )

    def _step(self) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self._speculate():
            return
        self.obs.batch_size(self.name, len(self._active))
        last = np.fromiter((s.last_token for s in self._active), dtype=np.int64, count=len(self._active))
        masks = self._prepare_masks()
        started = time.perf_counter()
        logits = self.runner.decode(last)
        if len(last) == 1 and self.spec is not None:
            self.spec_cost.saw_decode(time.perf_counter() - started)
        if masks is not None:
            masks.result()
        # Walk backwards so finishing (which moves the last row into the hole) is safe.
        for row in range(len(self._active) - 1, -1, -1):
            self._accept(row, logits[row])

    def _speculate(self) -> bool:
        """A speculative step instead of a decode step, when it can pay: one greedy sequence alone
        (a batched decode reads the weights once for every row; verifying rows one by one would
        read them once per row), a guess to check, and a record that says guessing helps."""
        if self.spec is None or len(self._active) != 1 or self._prefilling is not None:
            return False
        seq = self._active[0]
        if not seq.fast_greedy or not seq.acceptance.worthwhile or not self.spec_cost.pays(seq.acceptance):
            return False
        if self.spec_cost.verify_s is not None and self.spec_cost.decode_s is None:
            return False  # one plain step first, to learn what a guess must beat
        held = self.runner.length(0)
        room = min(self.spec.tokens, seq.req.max_new_tokens - seq.generated - 1, self.runner.max_seq_len - held - 1)
        draft = seq.lookup.propose()[: max(room, 0)]
        if not draft:
            return False
        self.obs.batch_size(self.name, 1)
        started = time.perf_counter()
        logits = self.runner.verify(0, [seq.last_token, *draft])
        self.spec_cost.saw_verify(time.perf_counter() - started)
        accepted = accepted_prefix(logits, draft)
        self.runner.truncate(0, held + 1 + accepted)  # the last token and the confirmed guesses
        seq.acceptance.record(len(draft), accepted)
        self.obs.speculation(self.name, len(draft), accepted)
        for i in range(accepted + 1):  # greedy: each row's choice is the guess (or the correction)
            self._accept(0, logits[i])
            if not self._active or self._active[0] is not seq:
                break  # it finished (EOS, a stop, the length limit)
        return True

    def _prepare_masks(self) -> Future | None:
        """Structured outputs: compute the next-token masks while the decode step runs."""
        constrained = [s.constraint for s in self._active if s.constraint is not None]
        if not constrained:
            return None
        if self._mask_pool is None:
            self._mask_pool = ThreadPoolExecutor(1, thread_name_prefix=f"kiln-masks-{self.name}")

        def prepare() -> None:
            for constraint in constrained:
                constraint.prepare()

        return self._mask_pool.submit(prepare)

    def _accept(self, row: int, logits: np.ndarray) -> None:
        seq = self._active[row]
        token = seq.choose(logits)
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.obs.ttft(self.name, now - seq.req.created)
        elif seq.last_token_at is not None:
            self.obs.inter_token(self.name, now - seq.last_token_at)
        seq.last_token_at = now
        seq.took(token)
        self.obs.tokens(self.name, seq.req.protocol, 1)
        if seq.constraint is not None and seq.constraint.error:
            self._finish(row, "error", f"structured output failed: {seq.constraint.error}")
            return
        if token in self.eos and (not seq.req.ignore_eos or seq.constraint is not None):
            self._finish(row, "eos")
            return
        if token in seq.req.stop_token_ids:
            self._finish(row, "stop")
            return
        event = TokenEvent(seq.decoder.push(token), token)
        if seq.req.logprobs is not None:
            event.logprob, event.top_logprobs = token_logprobs(logits, token, seq.req.logprobs)
        seq.req.emit(event)
        if seq.decoder.stopped or (seq.constraint is not None and seq.constraint.done):
            self._finish(row, "stop")
        elif seq.generated >= seq.req.max_new_tokens:
            self._finish(row, "length")
        elif not self.runner.can_grow(row):
            self._finish(row, "length")

    def _reap(self) -> None:
        now = time.monotonic()
        for row in range(len(self._active) - 1, -1, -1):
            req = self._active[row].req
            if req.cancelled.is_set():
                self._finish(row, "cancelled")
            elif req.deadline is not None and now >= req.deadline:
                self._finish(row, "timeout")
        if self._prefilling is not None:
            req = self._prefilling.req
            if req.cancelled.is_set():
                self._drop_prefilling("cancelled")
            elif req.deadline is not None and now >= req.deadline:
                self._drop_prefilling("timeout")
        with self._cv:
            expired = [r for r in self._waiting if r.cancelled.is_set() or (r.deadline and now >= r.deadline)]
            for req in expired:
                self._waiting.remove(req)
        for req in expired:
            reason = "cancelled" if req.cancelled.is_set() else "timeout"
            req.emit(FinishEvent(reason, len(req.prompt_ids), 0, None, now - req.created, now - req.created))

    def _finish(self, row: int, reason: str, message: str = "") -> None:
        seq = self._active[row]
        tail = seq.decoder.flush() if reason in ("length", "eos", "timeout") else ""
        if tail:
            seq.req.emit(TokenEvent(tail, -1))
        last = len(self._active) - 1
        if self.cache is None:
            if row != last:
                self.runner.move_row(last, row)
                self._active[row] = self._active[last]
            self._active.pop()
            self.runner.release_row(last)
            if self._prefilling is not None:  # keep it just after the decoding rows
                self.runner.move_row(last + 1, last)
                self.runner.release_row(last + 1)
        else:  # swap instead of move: the finished row's positions stay, in a free row
            if row != last:
                self._swap(row, last)
                self._active[row] = self._active[last]
            self._active.pop()
            self._leave(last, seq, keep=reason != "error")
            if self._prefilling is not None:
                self._swap(last + 1, last)
        self.obs.slots(self.name, self.slots_in_use, self.runner.max_batch)
        now = time.monotonic()
        ttft = None if seq.first_token_at is None else seq.first_token_at - seq.req.created
        seq.req.emit(
            FinishEvent(
                reason=reason,
                prompt_tokens=len(seq.req.prompt_ids),
                completion_tokens=seq.generated,
                ttft_s=ttft,
                total_s=now - seq.req.created,
                queue_s=seq.admitted - seq.req.created,
                message=message,
                cached_tokens=seq.cached,
            )
        )

    def _abort_all(self, message: str) -> None:
        self._drop_prefilling("error", message)
        for row in range(len(self._active) - 1, -1, -1):
            self._finish(row, "error", message)
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            req.emit(FinishEvent("error", len(req.prompt_ids), 0, None, 0.0, 0.0, message))
