"""The inference engine against the released evaluation loop, and the vLLM backend beside both (issues:
batched Open-RAG inference engine; Open-RAG on vLLM).

    python benchmarks/bench_engine.py [--questions 50] [--max_new_tokens 100] [--threads 1] [--output FILE.json]
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 .venv-vllm/bin/python benchmarks/bench_engine.py --model default \
        --sides baseline:float32 engine compiled vllm --dtypes float32 bfloat16 --threads 2 --scenarios always \
        --engine_python .venv/bin/python

Model: ``--model`` (default: the bundled base SmolLM2-135M-Instruct with the 15 reflection tokens added,
``OpenRAG.from_pretrained("smollm2")``; ``default``: the bundled trained model), on the CPU in each of ``--dtypes``
(default float32). Data: the first ``--questions`` questions of
../shared/data/hotpotqa/hotpotqa_dev_ircot500.jsonl; each gets 3 passages: its 2 gold (supporting)
paragraphs in file order, then the first non-gold paragraph in file order.

Sides, each in a subprocess of its own (so that peak memory is its own), same model, same inputs; each side runs in
every dtype of ``--dtypes``, or in one (``baseline:float32``):

* baseline: what the released ``run_short_form_multihop.py`` does per question, rewritten here: Hugging Face
  ``generate`` with batch size 1 and ``output_scores``; in adaptive mode first an unforced generation whose
  every step's full-vocabulary log-softmax is turned into a dict (the retrieval decision reads step 0), then
  one ``generate`` per passage whose steps keep the top 5000 log-probs, ``compute_transition_scores`` for
  the sequence score, and the same scoring and choice; without retrieval one more ``generate`` after
  ``[No Retrieval]``.
* engine: ``OpenRAG.answer_batch`` over all questions (prefix prefilled once per question, rows of several
  questions decoded together, ``--batch_size`` at a time; a stopped row's place goes to the next waiting row).
* compiled: the same engine with each decoder layer's work outside attention compiled (``--compile``,
  openrag.model.compiled); its ``load_seconds`` less the engine's is the compile's cost (cold or from inductor's
  disk cache, whichever this run found: set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder for a cold one).
* unrefilled: the same engine as it was before refill: the call's rows cut into chunks of ``--batch_size``, each
  decoded until its last row stops before the next starts (``openrag.answer.pipeline.CHUNK_BATCHES = 1``). With
  ``--slice`` questions per call, refill can matter only where a slice has more rows than ``--batch_size``.
* vllm: the same ``answer_batch`` with ``backend="vllm"`` (needs the .venv-vllm environment of
  scripts/setup_vllm.sh; eager mode, 2 GiB KV cache). Its model runs in vLLM's engine process: its peak
  memory is that of the process tree (the side's process and every descendant, sampled every 50 ms; pages
  two processes share count twice).

vLLM pins its own transformers, so a run with the vllm side starts from .venv-vllm; ``--engine_python`` runs the
other sides under another interpreter (``.venv/bin/python``: the engine as openrag's own environment runs it, on its
transformers; the two environments' engines have differed by 1.3x on one machine).

Scenarios: ``released`` = the published multi-hop setting (adaptive_retrieval, token rule, threshold 0.0,
ndocs 3, w_use 0.5, seqscore + groundedness + utility); ``always`` = always_retrieve with the same scoring
(no unforced pass on either side: the gain of batching and prefix sharing alone).
Answers are compared with those of the engine in the first dtype, after the same post-processing (openrag.answer.scoring.postprocess), and so is every
candidate (its text, and its score within float tolerance): the untrained base often ends an evidence row
at once (an empty candidate), so the candidates are the finer check.
Throughput counts questions per second of wall time, model loading excluded. Per phase (the engine's sides, which time their
forwards): the linear layers' useful FLOPs in prefill (prompts and passage suffixes) and in decode steps over the
forwards' time in each, against the peak. FLOPs: 2 x (linear-layer
weights) per computed token position, 2 x hidden x vocab per projected logit row, 4 x heads x head_dim per
(query, key) pair per layer; "useful" counts only real (non-padding) positions, and a side without work counters
(the released loop, vLLM) is credited with the engine's useful work on the same questions. Peak: the best of
several matmuls of 2048 x 2048 in each dtype on the same number of threads; each side's ``fraction_of_peak``
is its useful GFLOP/s over the peak in its own dtype.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa" / "hotpotqa_dev_ircot500.jsonl"
SCENARIOS = {
    "released": dict(mode="adaptive_retrieval", retrieval_rule="token", threshold=0.0),
    "always": dict(mode="always_retrieve", retrieval_rule="token", threshold=None),
}
SIDES = ("baseline", "engine", "compiled", "unrefilled", "vllm")
DTYPES = ("float32", "bfloat16")
SCORING = dict(ndocs=3, use_seqscore=True, use_groundness=True, use_utility=True, w_rel=1.0, w_sup=1.0, w_use=0.5,
               closed=False)  # the seed's score and open-task choice, which the released loop (Released) computes


def load_questions(n: int) -> tuple[list[str], list[list[dict]]]:
    questions, passages = [], []
    with open(DATA) as f:
        for line in f:
            row = json.loads(line)
            ctx = row["contexts"]
            chosen = [c for c in ctx if c["is_supporting"]] + [c for c in ctx if not c["is_supporting"]]
            questions.append(row["question_text"])
            passages.append([{"title": c["title"], "text": c["paragraph_text"]} for c in chosen[:3]])
            if len(questions) == n:
                break
    return questions, passages


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreePeak:
    """The largest summed RSS of this process and all its descendants, sampled every ``interval`` seconds
    (vLLM runs its model in a child process, which this process's own peak does not see)."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.me, self.peak = psutil.Process(), 0
        threading.Thread(target=self._watch, args=(interval,), daemon=True).start()

    def _watch(self, interval: float) -> None:
        import psutil

        while True:
            total = 0
            for proc in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # it ended between listing and reading
                    pass
            self.peak = max(self.peak, total)
            time.sleep(interval)

    def mib(self) -> float:
        return self.peak / 2**20


# -- the baseline: the released loop, batch size 1 --------------------------------------------------------


class Released:
    def __init__(self, rag, options: dict, max_new_tokens: int):
        from openrag.model.reflection import reflection_token_ids

        self.model, self.tok, self.opts, self.max_new = rag.model, rag.tokenizer, options, max_new_tokens
        ids = reflection_token_ids(self.tok)
        self.ret, self.noret = ids["[Retrieval]"], ids["[No Retrieval]"]
        self.rel = [ids["[Relevant]"], ids["[Irrelevant]"]]
        self.grd = [ids[t] for t in ("[Fully supported]", "[Partially supported]", "[No support / Contradictory]")]
        self.ut = [ids[f"[Utility:{k}]"] for k in range(1, 6)]
        self.stop = sorted(rag.engine.stop_ids)
        self.task, self.fmt = rag.options.task, rag.model_prompt_format  # the engine's prompts, as the model was trained
        self.tokens = 0  # positions computed (prompt + generated), for the FLOP estimate

    def generate(self, text: str):
        inputs = self.tok(text, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=self.max_new, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, eos_token_id=self.stop, pad_token_id=self.tok.pad_token_id)
        n = inputs.input_ids.shape[1]
        generated = out.sequences[0, n:].tolist()
        self.tokens += n + len(generated) - 1
        trans = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        seq_logprob = float(trans.sum()) / len(generated)
        text_out = self.tok.decode(out.sequences[0, n:], skip_special_tokens=True)
        return out, generated, seq_logprob, text_out

    def answer(self, question: str, passages: list[dict]) -> tuple[str, bool, list]:
        from openrag.answer.prompts import evidence_content, evidence_suffix, question_prompt
        from openrag.answer.scoring import postprocess

        prompt = question_prompt(self.task, question, None, self.fmt)
        mode, threshold = self.opts["mode"], self.opts["threshold"]
        retrieve = mode == "always_retrieve"
        if mode != "always_retrieve":
            out, *_ = self.generate(prompt)
            steps = [dict(enumerate(torch.log_softmax(s[0], dim=0).tolist())) for s in out.scores]  # every step, full vocab
            if mode == "adaptive_retrieval":
                p_r, p_n = math.exp(steps[0][self.ret]), math.exp(steps[0][self.noret])
                retrieve = p_r / (p_r + p_n) > threshold
        eos = [self.tok.eos_token]
        if not retrieve:
            *_, text = self.generate(prompt + "[No Retrieval]")
            return postprocess(text, eos), False, []
        best, best_score, candidates = None, -math.inf, []
        for p in passages[: self.opts["ndocs"]]:
            out, generated, seq_logprob, text = self.generate(prompt + evidence_suffix(evidence_content(self.task, p["title"], p["text"], self.fmt)))
            steps = []
            for s in out.scores:
                values, idx = torch.log_softmax(s[0], dim=0).topk(5000)
                steps.append(dict(zip(idx.tolist(), values.tolist())))
            prob = lambda step, t: math.exp(step.get(t, -100))  # noqa: E731
            rel = [prob(steps[0], t) for t in self.rel]
            score = self.opts["w_rel"] * rel[0] / sum(rel) + math.exp(seq_logprob)
            at = next((i for i, t in enumerate(generated) if t in self.grd), None)
            if at is not None:
                g = [prob(steps[at], t) for t in self.grd]
                score += self.opts["w_sup"] * (g[0] + 0.5 * g[1]) / sum(g)
            at = next((i for i, t in enumerate(generated) if t in self.ut), None)
            if at is not None:
                u = [prob(steps[at], t) for t in self.ut]
                score += self.opts["w_use"] * sum(v * x for v, x in zip((-1, -0.5, 0, 0.5, 1), u)) / sum(u)
            candidates.append((postprocess(text, eos), score))
            if score > best_score:
                best, best_score = text, score
        return postprocess(best, eos), True, candidates


# -- one side, in a worker process of its own ----------------------------------------------------------------


class Side:
    """One side loaded once; answers slices of the questions on request and keeps the totals."""

    def __init__(self, side: str, scenario: str, model: str, n: int, max_new_tokens: int, threads: int, batch_size: int,
                 dtype: str | None):
        from openrag.answer import OpenRAG
        from openrag.answer.backend_types import BackendOptions

        torch.set_num_threads(threads)
        self.side, self.batch_size, self.max_new = side, batch_size, max_new_tokens
        self.tree = TreePeak()
        start = time.perf_counter()
        if side == "vllm":
            self.rag = OpenRAG.from_pretrained(model, dtype=dtype, backend=BackendOptions(backend="vllm", enforce_eager=True, kv_cache_gib=2))
        else:
            if side == "unrefilled":
                from openrag.answer import pipeline

                pipeline.CHUNK_BATCHES = 1
            backend = BackendOptions(compile=side == "compiled")
            self.rag = OpenRAG.from_pretrained(model, device="cpu", dtype=dtype, backend=backend)
        self.load_seconds = time.perf_counter() - start
        self.questions, self.passages = load_questions(n)
        self.options = {**SCORING, **SCENARIOS[scenario]}
        self.released = Released(self.rag, self.options, max_new_tokens) if side == "baseline" else None
        self.loaded = self.tree.mib() if side == "vllm" else rss_mib()
        self.seconds = self.cpu_seconds = 0.0

    def run(self, start: int, stop: int) -> dict:
        qs, ps = self.questions[start:stop], self.passages[start:stop]
        wall, cpu = time.perf_counter(), time.process_time()
        if self.side == "baseline":
            with torch.inference_mode():
                triples = [self.released.answer(q, p) for q, p in zip(qs, ps)]
            answers, retrieved, candidates = (list(x) for x in zip(*triples))
        else:
            out = self.rag.answer_batch(qs, ps, max_new_tokens=self.max_new, batch_size=self.batch_size, **self.options)
            answers, retrieved = [a.text for a in out], [a.retrieved for a in out]
            candidates = [[(c.text, c.score) for c in a.candidates] for a in out]
        self.seconds += time.perf_counter() - wall
        self.cpu_seconds += time.process_time() - cpu
        return {"answers": answers, "retrieved": retrieved, "candidates": candidates}

    def totals(self) -> dict:
        if self.side == "vllm":  # the model and its work are in vLLM's process; its CPU time is not ours
            self.rag.engine.close()
            return {"seconds": self.seconds, "cpu_seconds": None, "rss_after_load_mib": self.loaded,
                    "peak_rss_mib": self.tree.mib(), "work": {}, "flops": None, "load_seconds": self.load_seconds}
        work = {"real_tokens": self.released.tokens} if self.side == "baseline" else vars(self.rag.engine.stats)
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "rss_after_load_mib": self.loaded,
                "peak_rss_mib": max(peak_rss_mib(), self.tree.mib()), "work": work, "flops": flop_counts(self.rag.model, work),
                "load_seconds": self.load_seconds}


def worker(args) -> None:
    """Line protocol on stdin/stdout: ``[start, stop]`` -> the slice's answers; ``null`` -> totals, exit."""
    # Library chatter must not reach the protocol, nor must that of child processes (vLLM's), which write to
    # file descriptor 1 itself: the protocol gets a copy of it, and 1 becomes stderr.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    side = Side(args.side, args.scenario, args.model, args.questions, args.max_new_tokens, args.threads, args.batch_size,
                args.dtype)
    print(json.dumps("ready"), file=channel, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        print(json.dumps(side.totals() if cmd is None else side.run(*cmd)), file=channel, flush=True)
        if cmd is None:
            return


class Worker:
    def __init__(self, side: str, dtype: str, scenario: str, args):
        python = sys.executable if side == "vllm" else args.engine_python
        cmd = [python, __file__, "--side", side, "--scenario", scenario, "--model", args.model, "--questions", str(args.questions),
               "--max_new_tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--batch_size", str(args.batch_size),
               "--dtype", dtype]
        self.name = f"{side} {dtype}"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, cmd):
        if cmd != "wait":
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (exit {self.proc.wait()})")
        return json.loads(line)


def run_scenario(scenario: str, runs: list[tuple[str, str]], args) -> dict:
    """Every (side, dtype) over the same questions, in slices taken in turn, the order rotating (the machine is
    shared: a load change hits every side alike). Keys: "side dtype"."""
    workers = {}
    for side, dtype in runs:  # one at a time: loading is heavy, and vLLM's start must not race the others'
        w = Worker(side, dtype, scenario, args)
        workers[w.name] = w
        w.ask("wait")
    names = list(workers)
    results = {name: {"answers": [], "retrieved": [], "candidates": []} for name in names}
    for k, start in enumerate(range(0, args.questions, args.slice)):
        order = names[k % len(names):] + names[:k % len(names)]
        for side in order:
            out = workers[side].ask([start, min(start + args.slice, args.questions)])
            for key, values in out.items():
                results[side][key].extend(values)
        print(f"{scenario}: {min(start + args.slice, args.questions)}/{args.questions} questions", flush=True)
    for side, w in workers.items():
        results[side].update(w.ask(None))
        w.proc.wait()
    return results


def flop_counts(model, work: dict) -> dict:
    from torch import nn

    cfg = model.config.get_text_config()
    linear = sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in name)
    head_dim = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    per_pair = 4 * cfg.num_attention_heads * head_dim * cfg.num_hidden_layers
    logits = 2 * cfg.hidden_size * cfg.vocab_size
    real, decoded = work.get("real_tokens", 0), work.get("decode_tokens", 0)
    useful = 2 * linear * real + logits * work.get("logit_rows", 0) + per_pair * work.get("attended_pairs", 0)
    computed = useful + 2 * linear * work.get("padded_tokens", 0)
    # The linear layers' useful work (vocabulary projection included) in each phase: a decode step projects each row.
    decode_linear = (2 * linear + logits) * decoded
    prefill_linear = 2 * linear * (real - decoded) + logits * (work.get("logit_rows", 0) - decoded)
    return {"useful": useful, "computed": computed, "prefill_linear": prefill_linear, "decode_linear": decode_linear}


def matmul_peak(threads: int, dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` square products in ``dtype``: the peak each side's share is taken of."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=getattr(torch, dtype)), torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown"
    return f"{name}, {os.cpu_count()} cores"


def compare(side: dict, engine: dict, n: int) -> dict:
    """One side against the engine: same answers, candidates and retrieval decisions."""
    pairs = [(b, e) for bc, ec in zip(side["candidates"], engine["candidates"]) for b, e in zip(bc, ec)]
    return {
        "same_answers_as_engine": sum(a == b for a, b in zip(side["answers"], engine["answers"])) / n,
        "same_retrieval_decisions_as_engine": sum(a == b for a, b in zip(side["retrieved"], engine["retrieved"])) / n,
        "candidates": len(pairs),
        "same_candidate_texts_as_engine": sum(b[0] == e[0] for b, e in pairs) / max(1, len(pairs)),
        "max_candidate_score_difference": max((abs(b[1] - e[1]) for b, e in pairs if b[0] == e[0]), default=0.0),
        "different_answers": [{"side": a, "engine": b} for a, b in zip(side["answers"], engine["answers"]) if a != b],
    }


def summarise(sides: dict, reference: str, n: int, peaks: dict[str, float]) -> dict:
    """Each side's speed, memory and share of its dtype's peak; answers compared with ``reference``'s (an engine)."""
    eng = sides[reference]
    summary = {}
    for name, side in sides.items():
        entry = {"seconds": side["seconds"], "questions_per_second": n / side["seconds"],
                 "engine_speedup_over_it": side["seconds"] / eng["seconds"], "cpu_seconds": side["cpu_seconds"],
                 "peak_rss_mib": side["peak_rss_mib"], "rss_after_load_mib": side["rss_after_load_mib"],
                 "load_seconds": side["load_seconds"],
                 "empty_answers": sum(not a for a in side["answers"])}
        if name != reference:
            entry.update(compare(side, eng, n))
        # A side without work counters (the released loop, vLLM) is credited with the engine's useful work: the
        # same questions and answers, whatever it computed beside them.
        useful = (side["flops"] or eng["flops"])["useful"]
        entry["useful_gflop"] = useful / 1e9
        entry["useful_gflops_per_s"] = useful / side["seconds"] / 1e9
        peak = peaks[name.split()[1]]  # in the side's own dtype
        entry["fraction_of_peak"] = entry["useful_gflops_per_s"] / peak
        work = side["work"]
        if "decode_seconds" in work:  # the engine's sides: its forwards timed by phase
            for phase in ("prefill", "decode"):
                rate = side["flops"][f"{phase}_linear"] / max(work[f"{phase}_seconds"], 1e-9) / 1e9
                entry[f"{phase}_seconds"] = work[f"{phase}_seconds"]
                entry[f"{phase}_linear_gflops_per_s"] = rate
                entry[f"{phase}_linear_fraction_of_peak"] = rate / peak
        summary[name] = entry
    summary[reference].update(work=eng["work"], computed_gflops_per_s=eng["flops"]["computed"] / eng["seconds"] / 1e9,
                             useful_gflops_per_cpu_s=eng["flops"]["useful"] / eng["cpu_seconds"] / 1e9,
                             nonempty_candidate_texts=sum(bool(c[0]) for cs in eng["candidates"] for c in cs))
    return summary


def side_runs(parser, sides: list[str], dtypes: list[str]) -> list[tuple[str, str]]:
    """``--sides`` as (side, dtype) pairs: a bare side in every dtype, ``side:dtype`` in that one; the engine in the
    first dtype comes first (the reference), added if missing."""
    runs = []
    for spec in sides:
        side, _, dtype = spec.partition(":")
        if side not in SIDES or (dtype and dtype not in DTYPES):
            parser.error(f"--sides {spec}: expected one of {', '.join(SIDES)}, optionally :{'|:'.join(DTYPES)}")
        runs += [(side, d) for d in ([dtype] if dtype else dtypes) if (side, d) not in runs]
    reference = ("engine", dtypes[0])
    return [reference] + [r for r in runs if r != reference]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every side (the sides take turns)")
    parser.add_argument("--batch_size", type=int, default=32, help="engine rows decoded together")
    parser.add_argument("--model", default="smollm2", help="checkpoint every side loads (default: the bundled base)")
    parser.add_argument("--sides", nargs="+", default=["baseline", "engine"],
                        help=f"sides to run, of {', '.join(SIDES)}, each in every dtype or as SIDE:DTYPE in one (the engine always, "
                             "in the first dtype: the others are compared with it); vllm needs .venv-vllm")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=DTYPES, help="the dtypes sides run in")
    parser.add_argument("--engine_python", default=sys.executable,
                        help="interpreter of every side but vllm (default: this one), e.g. .venv/bin/python beside .venv-vllm")
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=list(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--slice", type=int, default=10, help="questions per turn (sides take turns)")
    args = parser.parse_args()
    if args.side:
        worker(args)
        return
    runs = side_runs(parser, args.sides, args.dtypes)
    reference = f"engine {args.dtypes[0]}"

    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "model": args.model, "dtypes": args.dtypes, "threads": args.threads, "questions": args.questions,
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "slice": args.slice,
              "python": {"vllm": sys.executable, "others": args.engine_python}, "reference": reference,
              "load_average_before": os.getloadavg(),
              "matmul_peak_gflops": {d: matmul_peak(args.threads, d) for d in args.dtypes}, "scenarios": {}}
    for scenario in args.scenarios:
        summary = summarise(run_scenario(scenario, runs, args), reference, args.questions, report["matmul_peak_gflops"])
        report["scenarios"][scenario] = summary
        report["load_average_after"] = os.getloadavg()
        print(json.dumps({side: {k: v for k, v in entry.items() if k != "different_answers"}
                          for side, entry in summary.items()}, indent=1), flush=True)
        if args.output:  # after each scenario: a long run stopped early keeps what it measured
            Path(args.output).write_text(json.dumps(report, indent=1))
    report["matmul_peak_gflops_after"] = {d: matmul_peak(args.threads, d) for d in args.dtypes}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "scenarios"}, indent=1))


if __name__ == "__main__":
    main()
