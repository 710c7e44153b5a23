"""A continuously batching rollout server on a transformers model (the CPU engine).

One background thread runs the engine: between decode steps it admits waiting requests (up to
`max_num_seqs` rows), encoding their prompts, then feeds every active row its last sampled token
in one forward pass. A row that samples eos, completes a stop string or reaches its
`max_new_tokens` leaves the batch in that step and its caller's future resolves; no row decodes
after it finished, and no request waits for another to finish.

The batch's keys/values are one `DynamicCache` of left-padded rows with a mask of the columns that
hold each row's real tokens, as in prefix_cache.py (position ids are the mask's cumulative sum, so
padding changes nothing but float rounding). A decode step appends one column; the rows are
re-packed (`CachedBatch.select` / `concat_batches`) only when some join or leave.

A finished row's keys/values are kept under its request id (the trajectory): when the id's next
turn extends them, only its new tokens are encoded. The most recent `max_num_seqs` trajectories
keep theirs; new weights and `release()` drop them all.

Sampling follows HFRollout (transformers' temperature, top-k and top-p warpers, in that order; the
model's own generation config is not applied), and so does the stop-string contract.
"""
from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch
from transformers import (DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from verl.workers.rollout.base import build_prompt_batch, position_ids_from_mask
from verl.workers.rollout.prefix_cache import CachedBatch, concat_batches, continuation_inputs, match_rows
from verl.workers.rollout.server import GenerationOutput, RolloutServer, SamplingSettings, Weights


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingSettings
    settle: Callable[[GenerationOutput | BaseException], None]
    generator: torch.Generator | None  # the request's seeded stream, or None for the global one
    cached: list[int] = field(default_factory=list)  # the real tokens whose keys/values the batch holds
    generated: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def output(self) -> GenerationOutput:
        return GenerationOutput(list(self.generated), list(self.log_probs), self.finish_reason)


@lru_cache(maxsize=64)
def _warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """generate's sampling warpers for these settings (veRL's top_k -1 = off = transformers' 0)."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _resolve(future: asyncio.Future, result: GenerationOutput | BaseException) -> None:
    if future.done():  # the caller gave up (cancelled)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class HFServer(RolloutServer):
    def __init__(self, module: torch.nn.Module, tokenizer, max_num_seqs: int):
        """`module`: the engine's own plain HF causal LM (put in eval mode); `max_num_seqs`: the most
        rows decoded at once (later requests wait for a row to leave)."""
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.device = next(module.parameters()).device
        self._cond = threading.Condition()  # guards _pending, _in_flight, _released, _closed and weight loads
        self._pending: deque[_Request] = deque()
        self._in_flight: set[str] = set()
        self._released = self._closed = False
        # engine thread only (and load/release, which run while nothing is in flight)
        self._rows: list[_Request] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, columns] of the cache
        self._trajectories: OrderedDict[str, CachedBatch] = OrderedDict()  # request id -> last turn's row
        self.prefill_tokens = self.decode_steps = self.decoded_rows = self.max_batch_rows = 0
        self._thread = threading.Thread(target=self._run, name="hf-server", daemon=True)
        self._thread.start()

    # -- the interface ---------------------------------------------------------------------------

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        if not prompt_ids:
            raise ValueError("generate needs at least one prompt token")
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(self.device).manual_seed(params.seed)
        request = _Request(request_id, list(prompt_ids), params,
                           lambda result: loop.call_soon_threadsafe(_resolve, future, result), generator)
        with self._cond:
            if self._released:
                raise RuntimeError("generate on a released server: resume() first")
            if self._closed:
                raise RuntimeError("generate on a closed server")
            if request_id in self._in_flight:
                raise ValueError(f"request {request_id!r} is already in flight (a trajectory sends one turn at a time)")
            self._in_flight.add(request_id)
            self._pending.append(request)
            self._cond.notify()
        return await future

    async def update_weights(self, weights: Weights) -> None:
        await asyncio.to_thread(self._load, weights)

    async def release(self) -> None:
        with self._cond:
            self._require_idle("release")
            self._trajectories.clear()
            self._released = True

    async def resume(self) -> None:
        with self._cond:
            self._released = False

    def metrics(self) -> dict[str, float]:
        return {"server/prefill_tokens": self.prefill_tokens, "server/decode_steps": self.decode_steps,
                "server/decoded_rows": self.decoded_rows, "server/max_batch_rows": self.max_batch_rows}

    def close(self) -> None:
        """Stop the engine thread once the requests in flight are done."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _load(self, weights: Weights) -> None:
        with self._cond:
            self._require_idle("update_weights")
            self.module.load_state_dict(dict(weights))  # copies into the engine's own dtype and device
            self._trajectories.clear()  # keys/values of the old weights
            self._released = False

    def _require_idle(self, what: str) -> None:
        if self._in_flight:
            raise RuntimeError(f"{what} while {len(self._in_flight)} request(s) are in flight")

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._rows or self._closed):
                    self._cond.wait()
                if self._closed and not (self._pending or self._rows):
                    return
                free = self.max_num_seqs - len(self._rows)
                joining = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
            try:
                with torch.no_grad():
                    if joining:
                        self._admit(joining)
                    if self._rows:
                        self._step()
            except Exception as error:  # the batch's state is unknown: fail its requests, keep serving
                failed = {id(r): r for r in self._rows + joining if r.finish_reason is None}
                self._rows, self._cache, self._mask = [], None, None
                for request in failed.values():
                    self._settle(request, error)

    def _admit(self, joining: list[_Request]) -> None:
        """Encode the joining requests' prompts (only what their trajectory's cache lacks), sample their
        first tokens and add the unfinished ones to the batch."""
        prefixes = {id(r): self._trajectory_prefix(r) for r in joining}
        fresh = [r for r in joining if prefixes[id(r)] is None]
        continued = [r for r in joining if prefixes[id(r)] is not None]
        parts = []
        if fresh:
            parts.append((fresh, self._prefill(fresh, None)))
        if continued:
            parts.append((continued, self._prefill(continued, concat_batches([prefixes[id(r)] for r in continued]))))
        batches = [] if self._cache is None else [self._batch()]
        for requests, part in parts:
            staying = [i for i, r in enumerate(requests) if r.finish_reason is None]
            for i, request in enumerate(requests):
                if request.finish_reason is not None:
                    self._finish(request, part.select([i]))
            if staying:
                batches.append(part.select(staying))
                self._rows.extend(requests[i] for i in staying)
        if batches:
            self._set_batch(concat_batches(batches) if len(batches) > 1 else batches[0])

    def _trajectory_prefix(self, request: _Request) -> CachedBatch | None:
        """The keys/values of the request's trajectory when its prompt extends them."""
        prefix = self._trajectories.pop(request.request_id, None)
        if prefix is None or match_rows(prefix.tokens, [request.prompt]) is None:
            return None
        return prefix

    def _prefill(self, requests: list[_Request], cached: CachedBatch | None) -> CachedBatch:
        """One forward over the requests' new prompt tokens (left padded), continuing `cached` (their
        trajectories' rows, in order) when given; samples each first token. Returns their rows."""
        prompts = [r.prompt for r in requests]
        pad_id = self.tokenizer.pad_token_id
        if cached is None:
            batch = build_prompt_batch(prompts, pad_id).batch
            new_ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            cache, cached_length = DynamicCache(), 0
        else:
            input_ids, mask = continuation_inputs(cached, prompts, pad_id)
            new_ids = input_ids[:, cached.length:]
            cache, cached_length = DynamicCache(ddp_cache_data=cached.layers), cached.length
        self.prefill_tokens += int(mask[:, cached_length:].sum())
        logits = self._forward(cache, new_ids, mask)
        for request in requests:
            request.cached = list(request.prompt)
        self._sample(requests, logits)
        return CachedBatch([(layer.keys, layer.values) for layer in cache.layers], mask, [r.cached for r in requests])

    def _step(self) -> None:
        """Feed every row its last sampled token, sample the next, let the finished rows leave."""
        rows = self._rows
        fed = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        logits = self._forward(self._cache, fed, self._mask)
        for request in rows:
            request.cached.append(request.generated[-1])
        self.decode_steps += 1
        self.decoded_rows += len(rows)
        self.max_batch_rows = max(self.max_batch_rows, len(rows))
        self._sample(rows, logits)
        finished = [i for i, r in enumerate(rows) if r.finish_reason is not None]
        if not finished:
            return
        batch = self._batch()
        for i in finished:
            self._finish(rows[i], batch.select([i]))
        staying = [i for i, r in enumerate(rows) if r.finish_reason is None]
        self._rows = [rows[i] for i in staying]
        if staying:
            self._set_batch(batch.select(staying))
        else:
            self._cache = self._mask = None

    def _forward(self, cache: DynamicCache, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, V] float32 logits after the last of `input_ids` [B, C], whose keys/values join `cache`;
        `attention_mask` [B, cached + C] covers both."""
        positions = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1]:]
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _sample(self, rows: list[_Request], logits: torch.Tensor) -> None:
        """Append each row's next token and its log-prob under log_softmax(logits / temperature)
        (greedy: temperature 1); mark the rows that finish with it."""
        temperatures = torch.tensor([1.0 if r.params.greedy else r.params.temperature for r in rows],
                                    device=logits.device).unsqueeze(1)
        log_probs = torch.log_softmax(logits / temperatures, dim=-1)
        for i, request in enumerate(rows):
            params = request.params
            if params.greedy:
                token = int(logits[i].argmax())
            else:
                scores = _warpers(params.temperature, params.top_k, params.top_p)(None, logits[i:i + 1])
                token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=request.generator))
            request.generated.append(token)
            request.log_probs.append(float(log_probs[i, token]))
            request.finish_reason = self._finish_reason(request)

    def _finish_reason(self, request: _Request) -> str | None:
        if request.generated[-1] == self.tokenizer.eos_token_id or self._completes_stop(request):
            return "stop"
        if len(request.generated) >= request.params.max_new_tokens:
            return "length"
        return None

    def _completes_stop(self, request: _Request) -> bool:
        """Whether the last token completed a stop string in the generated text. Only the tail can hold
        a new match: a stop string of n bytes spans at most n byte-level tokens."""
        stop = request.params.stop
        if not stop:
            return False
        tail = max(len(s.encode()) for s in stop) + 1
        text = self.tokenizer.decode(request.generated[-tail:], skip_special_tokens=False)
        return any(s in text for s in stop)

    def _finish(self, request: _Request, row: CachedBatch) -> None:
        """Keep the row's keys/values for the trajectory's next turn, then answer the caller."""
        self._trajectories[request.request_id] = row
        self._trajectories.move_to_end(request.request_id)
        while len(self._trajectories) > self.max_num_seqs:
            self._trajectories.popitem(last=False)
        self._settle(request, request.output())

    def _settle(self, request: _Request, result: GenerationOutput | BaseException) -> None:
        with self._cond:
            self._in_flight.discard(request.request_id)
        request.settle(result)

    def _batch(self) -> CachedBatch:
        """The active rows' cache as a CachedBatch (views of the live tensors)."""
        layers = [(layer.keys, layer.values) for layer in self._cache.layers]
        return CachedBatch(layers, self._mask, [r.cached for r in self._rows])

    def _set_batch(self, batch: CachedBatch) -> None:
        self._cache = DynamicCache(ddp_cache_data=batch.layers)
        self._mask = batch.mask
