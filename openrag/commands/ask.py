"""``openrag ask "question" [--passages FILE | --index INDEX_DIR [--top_k K]] [--json]``: answer one question, then
show the evidence. ``openrag ask --questions FILE``: answer every question of a QA file (any format
``openrag eval`` reads) from its own passages (unranked candidates BM25-ranked, the first ``--ndocs``) or
from ``--index``, and show each answer beside the gold one."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ..bundled_names import DEFAULT_NAME
from ..precision import DTYPE_HELP, DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..answer.backends import add_backend_flags
    from ..answer.options import AnswerOptions

    parser.add_argument("question", nargs="?", help="the question to answer")
    parser.add_argument("--questions", metavar="FILE", help="answer every question of a QA file (JSON lines or JSON in any "
                        "format `openrag eval` reads, e.g. examples/hotpotqa_sample.jsonl) from its own passages")
    parser.add_argument("--passages", metavar="FILE", help="evidence: a JSON list (or JSON lines) of {title, text} or "
                        "strings, or a text file with one passage per blank-line-separated block")
    parser.add_argument("--index", metavar="INDEX_DIR", help="evidence: the passages an `openrag index` folder retrieves "
                        "for the question (instead of --passages)")
    parser.add_argument("--top_k", type=int, metavar="K", help="with --index: passages retrieved and used (sets --ndocs)")
    parser.add_argument("--choices", nargs="+", metavar="TEXT", help="answer choices A, B, C, ... (task arc_c)")
    parser.add_argument("--json", action="store_true", help="print the answer object as JSON")
    parser.add_argument("--model_name", default=DEFAULT_NAME, help="checkpoint folder, hub name, or 'default'/'smollm2'")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help=DTYPE_HELP)
    AnswerOptions.add_arguments(parser, "ask")
    add_backend_flags(parser)


def print_answer(answer) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(answer.text or "(empty answer)", markup=False, highlight=False)
    if answer.retrieval_rule is not None:
        from ..answer.scoring import get_rule

        side = get_rule(answer.retrieval_rule).side
        verdict = "retrieved" if answer.retrieved else "did not retrieve"
        console.print(f"[dim]{verdict}: {answer.retrieval_rule} rule, {answer.retrieval_value:.4f} vs threshold "
                      f"{answer.threshold} (retrieve when {side})[/dim]")
    if answer.candidates:
        # The chosen candidate: the best-scored one whose answer is the answer (identical answers' scores add up by
        # default, so the best single score need not be it); else the best-scored (the page's chosenIndex).
        best = max(range(len(answer.candidates)),
                   key=lambda i: (answer.candidates[i].text == answer.text, answer.candidates[i].score))
        table = Table(title="evidence", show_lines=False)
        for name in ("#", "title", "answer", "score", "rel", "sup", "use", "seq"):
            table.add_column(name, justify="right" if name in ("#", "score", "rel", "sup", "use", "seq") else "left")
        for i, c in enumerate(answer.candidates):
            title = f"chain 1-{c.passage['chained']}" if c.passage.get("chained") else c.passage["title"] or c.passage["text"][:40]
            table.add_row(("*" if i == best else "") + str(i + 1), title, c.text, f"{c.score:.3f}", f"{c.relevance:.3f}",
                          f"{c.groundedness:.3f}", f"{c.utility:.3f}", f"{c.seq_score:.3f}")
        console.print(table)
    for note in answer.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def run(args: argparse.Namespace) -> int:
    from ..answer import AnswerOptions, OpenRAG
    from ..answer.backends import backend_options

    if (args.question is None) == (args.questions is None):
        raise ValueError("give a question, or --questions FILE (not both)")
    if args.questions and args.passages:
        raise ValueError("--questions answers each question from its own passages: drop --passages")
    if args.index and args.passages:
        raise ValueError("give --passages or --index, not both")
    if args.top_k is not None and not args.index:
        raise ValueError("--top_k needs --index (with --passages, --ndocs says how many are used)")
    if args.questions and args.choices:
        raise ValueError("--questions answers each question with its own choices (the file's): drop --choices")
    options = AnswerOptions.from_args(args, "ask")
    backend = backend_options(args, batches=False)
    if options.query != "question" and not args.index:
        raise ValueError(f"--query {options.query} needs --index (it says what the index is asked)")
    if args.top_k is not None:
        options = replace(options, ndocs=args.top_k)
    if args.questions:
        from ..eval.passages import read_questions

        examples, passages = read_questions(args.questions, options.ndocs, bool(args.index), options.task)
    else:
        from ..tasks import get_task

        try:
            get_task(options.task).check_choices(args.choices)  # before the model loads
        except ValueError as err:
            said = str(err)
            raise ValueError("--" + said if said.startswith("choices") else f"--choices: {said}") from None
        from ..data.passage_files import read_passages

        passages = read_passages(args.passages) if args.passages else None  # read before the model loads
    retriever = None
    if args.index:
        from ..retrieval import open_index

        retriever = open_index(args.index)
    rag = OpenRAG.from_pretrained(args.model_name, device=args.device, dtype=args.dtype, retriever=retriever, backend=backend)
    if args.questions:
        choices = [ex.choices for ex in examples] if any(ex.choices for ex in examples) else None
        answers = rag.answer_batch([ex.question for ex in examples], passages, choices, **vars(options))
        if args.json:
            print(json.dumps([{**a.to_dict(), "gold": ex.answers} for a, ex in zip(answers, examples)], indent=2, ensure_ascii=False))
            return 0
        from ..eval.metrics import exact_match

        for k, (ex, answer) in enumerate(zip(examples, answers), 1):
            print(f"\n[{k}/{len(examples)}] {ex.question}\ngold: {' | '.join(ex.answers)}")
            print_answer(answer)
        hits = sum(max(exact_match(a.text, g) for g in ex.answers) for a, ex in zip(answers, examples))
        print(f"\nexact match with a gold answer: {hits:.0f} of {len(examples)}")
        return 0
    answer = rag.answer(args.question, passages, choices=args.choices, **vars(options))
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_answer(answer)
    return 0
