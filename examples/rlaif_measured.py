"""RLAIF on CPU, measured: train a small judge, serve it, run GRPO against it, and check both against a rule.

    python examples/rlaif_measured.py --quick      # the pipeline end to end, small (a few minutes on 2 cores)
    python examples/rlaif_measured.py              # the measured run (see the README's RLAIF section)
    python examples/rlaif_measured.py --seeds 0 1 2

What it does, all offline:

1. **Policy.** The built-in tiny model (character-level, ~0.3M parameters), given SFT on 2-digit addition
   (``12+35=`` -> ``47``) from an imperfect teacher that drops the units-to-tens carry 60% of the time (the
   ``arithmetic`` task's ``teacher_error``; the default ReFT job's teacher makes the same mistake). SFT copies
   the mistake, so the policy is wrong on many sums that carry, and a reward that knows better can correct it.
   With a correct teacher there is little for any reward to add: on the default job's clean setting RL
   against the rule itself moved accuracy by -1.8 to 0 points, and an earlier version of this example, SFT'd
   on right answers, moved by +/-2 points against the judge.
2. **Judge.** A separate tiny model (the same 2-layer architecture, its own tokenizer, random init) trained on
   *judging* data: the exact request the ``judge`` reward provider sends (its :data:`TEMPLATE` rendered with
   the provider's own protection: every untrusted field in tags with a fresh per-request nonce, the data
   notice, look-alikes neutralised; then the judge tokenizer's chat template, exactly as ``rewardhub serve``
   applies it). "Right" is THE RULE: rewardhub's ``verifier`` on the row's gold answer. The answers judged are
   the gold answer, plausible wrong ones (off by one or ten, digits swapped, a random number) and the weak
   policy's own samples, balanced half right, half wrong. The judge is reference-guided (the template shows
   the row's ``answer``, like MT-Bench's reference-guided grading): it checks the answer against the
   reference rather than doing the sum. What makes it learnable (see below for what failed without them):
   - its tokenizer (``rewardhub.tiny_model.build_bpe_tokenizer``, byte-level BPE learnt from the requests)
     cuts numbers into runs of up to 3 digits that keep the newline before them (``"\n147"`` is one token),
     so each answer is one token, and no digit of a nonce is that token;
   - its reply copies the two answers before the verdict (:func:`judge_reply`), so the comparison is
     between neighbours, not between two tokens ~40 positions apart among ~260;
   - half its rows are verdict drills (:func:`drill_rows`): the same reply after a request that holds only
     the two answers.
3. **RLAIF.** ``rewardhub serve --model JUDGE`` (127.0.0.1, a free port) and ``rewardhub.train(algo="grpo",
   reward="judge", reward_args={base_url, model, template, ...})`` from the policy.
4. **Measured, held out** (test-split questions, never trained on by either model): the judge's agreement
   with the rule on judging examples and on the policy's own samples before and after RL, and the policy's
   greedy accuracy under the rule (not the judge) before and after RL, paired per prompt (answers fixed and
   broken, exact sign test). For scale, the same GRPO run against the rule itself (the ``verifier``): what a
   judge that never errs would give.

What was learnt on the way (numbers in the README):

- a judge without the reference that writes the sum before its verdict agreed with the rule at chance: it
  copied the answer under review into its "working" (copying is easier than adding);
- the protected request does not fit a character-level judge (861 characters, 256 positions); BPE makes it
  ~260 tokens;
- with one token per digit, a bare ``SCORE: n`` verdict stayed at chance (its loss at ln 2) however the
  request was laid out, and a judge copying the answers digit by digit could not copy them; a curriculum
  from a short request did not carry over to the protected one;
- with an answer as one token the copy was learnt within 150 steps, but without drills the verdict after it
  was still at chance after 350 steps (a side run; whether it would have come later was not measured). With
  the drills (this file) the judge agreed with the rule on 88-96% of held-out examples after 800 steps
  (three runs);
- from a policy SFT'd on right answers, GRPO against the judge moved greedy accuracy by +/-2 points (noise);
  from the imperfect teacher's policy it gains about as much as GRPO against the rule itself (README).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

#: The judge's request (the provider's ``template`` option): reference-guided, the row's gold ``answer`` shown.
TEMPLATE = ("Check the response against the reference answer.\n{data_notice}\n{reference}\n{completion}\n"
            "Reply SCORE: {max_score} if the response is the reference answer, SCORE: {min_score} if not.")
MIN_SCORE, MAX_SCORE = 1, 10  # the provider's default scale; SCORE: 0 would be outside it (status error)
JUDGE_NAME = "judge"
JUDGE_POSITIONS = 512  # the judge's context: a protected request is ~360 BPE tokens
TASK = {"digits": 2, "ops": "+"}
#: the policy's SFT teacher drops the units-to-tens carry this often (the default ReFT job's teacher does the same)
TEACHER_ERROR = 0.6


@dataclass
class Sizes:
    """How much of everything: ``--quick`` shrinks it all."""

    policy_sft_steps: int = 1500  # to the teacher's level: 61.5% greedy on the held-out prompts, many carry sums wrong
    judge_sft_steps: int = 800
    judge_batch: int = 64
    judge_lr: float = 1e-3
    judge_vocab: int = 1200
    judging_questions: int = 3000  # train questions that judging data is made from
    rl_steps: int = 100
    rl_prompts: int = 16  # prompts per RL step (x num_generations samples)
    rl_lr: float = 2e-4
    rl_temperature: float = 1.0
    num_generations: int = 8
    heldout_questions: int = 150  # test questions for the judge's held-out agreement
    eval_prompts: int = 200  # test prompts for the policy's accuracy under the rule
    sample_prompts: int = 100  # test prompts whose policy samples the judge and the rule both score
    #: share of unparseable judge replies RL tolerates; the quick mode's judge is too short-trained to be held
    #: to the format (the measured run's judge is, at the default 0.5)
    max_failure_rate: float = 0.5


QUICK = Sizes(policy_sft_steps=150, judge_sft_steps=60, judge_batch=16, judge_vocab=600,
              judging_questions=300, rl_steps=4, rl_prompts=4, num_generations=4, heldout_questions=20,
              eval_prompts=40, sample_prompts=16, max_failure_rate=1.0)


# ------------------------------------------------------------------------------------------------------------
# the rule and the judging data
# ------------------------------------------------------------------------------------------------------------

class Rule:
    """THE RULE: rewardhub's ``verifier`` (math checker) against the row's gold ``answer``; status ok = right."""

    def __init__(self):
        from rewardhub.reward_resolution import build_reward

        self.provider = build_reward("verifier", {})

    def __call__(self, rows: list[dict], completions: list[str]) -> list[bool]:
        from rewardhub.rewards import Sample, Status

        rewards = self.provider([Sample(r["prompt"], c, r, None) for r, c in zip(rows, completions)])
        return [r.status is Status.OK for r in rewards]

    def close(self) -> None:
        self.provider.close()


def wrong_answers(answer: int, rng: random.Random) -> list[str]:
    """Plausible wrong answers to an addition: off by one or ten, a dropped carry, swapped digits, a random number."""
    candidates = {answer + 1, answer - 1, answer + 10, answer - 10, int(str(answer)[::-1]), rng.randrange(200)}
    if answer >= 10:
        candidates.add(answer - 10 * rng.choice((1, 2)))
    return [str(c) for c in sorted(candidates) if c != answer and c >= 0]


def judge_message(row: dict, completion: str, token=None) -> str:
    """The user message the ``judge`` provider sends for (row, completion) with ``template=TEMPLATE``.

    The provider's own pieces, as its ``_values`` and ``_judge`` use them (the test checks they agree); each
    call draws a fresh nonce, as each request does (``token`` fixes it, for the test).
    """
    from rewardhub_judge.prompts import prompt_text, reference_text, render

    values = {"prompt": prompt_text(row["prompt"], row), "completion": completion,
              "reference": reference_text(row, ("reference", "answer")), "rubric": "",
              "min_score": f"{MIN_SCORE:g}", "max_score": f"{MAX_SCORE:g}"}
    return (render(TEMPLATE, False, values) if token is None else render(TEMPLATE, False, values, token)).text


def judge_reply(row: dict, completion: str, right: bool) -> str:
    """What the judge should answer: the reference and the response copied out of their blocks, one per line,
    then the verdict in the form the provider parses.

    Why the copies: the verdict is "are these two numbers equal", a comparison of two tokens ~40 positions
    apart in a ~260-token request, which a tiny model trained from scratch does not find (its bare verdict stays
    at chance). Copying one token out of a block is easy to learn (the answer tokens are the only
    newline-numbers in the request, see ``number_takes_space``), and once both are copied the comparison is
    between neighbours. It is the judge's working, as a chain of thought is for a large judge.
    """
    return f"\n{row['answer']}\n{completion}\nSCORE: {MAX_SCORE if right else MIN_SCORE}"


def served_prompt(tokenizer, message: str) -> str:
    """``message`` as ``rewardhub serve`` feeds it to the model (its LocalModel.render, chat template and all)."""
    from rewardhub_judge.server import LocalModel, Message

    return LocalModel(None, tokenizer, JUDGE_NAME).render([Message(role="user", content=message)])


def judging_examples(rows: list[dict], policy_samples: list[str] | None, rule: Rule, seed: int,
                     balance: bool = True) -> list[dict]:
    """(row, completion, label) examples: per question the gold answer, one plausible wrong answer and the
    policy's sample (when given); labelled by the rule; balanced to half right, half wrong (``balance``)."""
    rng = random.Random(seed)
    cands: list[tuple[dict, str]] = []
    for i, row in enumerate(rows):
        cands.append((row, row["answer"]))
        cands.append((row, rng.choice(wrong_answers(int(row["answer"]), rng))))
        if policy_samples is not None:
            cands.append((row, policy_samples[i]))
    labels = rule([r for r, _ in cands], [c for _, c in cands])
    examples = [{"row": r, "completion": c, "right": ok} for (r, c), ok in zip(cands, labels)]
    if balance:
        right = [e for e in examples if e["right"]]
        wrong = [e for e in examples if not e["right"]]
        n = min(len(right), len(wrong))
        examples = rng.sample(right, n) + rng.sample(wrong, n)
    rng.shuffle(examples)
    return examples


def sft_rows(examples: list[dict], tokenizer) -> list[dict]:
    """Judging examples as SFT rows: the prompt exactly as served, the reply as the completion (SFT adds EOS)."""
    return [{"prompt": served_prompt(tokenizer, judge_message(e["row"], e["completion"])),
             "completion": judge_reply(e["row"], e["completion"], e["right"]),
             "answer": judge_reply(e["row"], e["completion"], e["right"])}
            for e in examples]


def drill_rows(examples: list[dict], tokenizer) -> list[dict]:
    """The judge's verdict drills: the same reply as :func:`sft_rows`, after a short request that holds only the
    two answers. On the ~260-token protected request the comparison has to be learnt among hundreds of
    distracting positions; here it is learnt with none (the judge is served and measured only on the
    protected request)."""
    rows = []
    for e in examples:
        reply = judge_reply(e["row"], e["completion"], e["right"])
        message = f"Are these the same?\n{e['row']['answer']}\n{e['completion']}"
        rows.append({"prompt": served_prompt(tokenizer, message), "completion": reply, "answer": reply})
    return rows


def arithmetic_rows(split: str, size: int, seed: int = 0, teacher_error: float = 0.0) -> list[dict]:
    from rewardhub_tasks.arithmetic import build_arithmetic

    return build_arithmetic(split, size, seed=seed, teacher_error=teacher_error, **TASK).to_list()


# ------------------------------------------------------------------------------------------------------------
# the judge server
# ------------------------------------------------------------------------------------------------------------

def judge_reward_args(url: str, template_file: Path) -> dict:
    """The ``--reward-arg`` options of the run (a reply is ~20 tokens; one generation at a time on the server)."""
    return {"base_url": url, "model": JUDGE_NAME, "template": str(template_file), "max_tokens": 40,
            "concurrency": 2, "timeout": 60}


def judge_agreement(provider, examples: list[dict]) -> dict:
    """Score ``examples`` with the judge provider; agreement with the rule overall, on right and on wrong ones."""
    from rewardhub.rewards import Sample

    rewards = provider([Sample(e["row"]["prompt"], e["completion"], e["row"], None) for e in examples])
    said = [r.usable and r.value >= 0.5 for r in rewards]
    agree = [s == e["right"] for s, e in zip(said, examples)]
    right = [a for a, e in zip(agree, examples) if e["right"]]
    wrong = [a for a, e in zip(agree, examples) if not e["right"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"n": len(examples), "agreement": mean(agree), "on_right": mean(right), "on_wrong": mean(wrong),
            "n_right": len(right), "failed": sum(not r.usable for r in rewards),
            "judge_says_right": mean(said), "rule_says_right": mean([e["right"] for e in examples])}


# ------------------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------------------

def policy_samples(model: str, rows: list[dict], temperature: float, seed: int) -> list[str]:
    import rewardhub

    result = rewardhub.evaluate(model=model, data=rows, reward="verifier", temperature=temperature,
                                max_new_tokens=6, seed=seed, limit=0)
    return [r["completion"] for r in result.rows]


def greedy_correct(model: str, rows: list[dict], rule: Rule) -> list[bool]:
    """Per held-out prompt, whether the model's greedy answer is right under the rule."""
    return rule(rows, policy_samples(model, rows, temperature=0.0, seed=0))


def paired(before: list[bool], after: list[bool]) -> dict:
    """The greedy answers before and after RL on the same prompts: how many RL fixed and broke, and the exact
    two-sided sign test on those (McNemar's exact test): the chance of a split at least this uneven if RL
    changed answers at random."""
    fixed = sum(a and not b for b, a in zip(before, after))
    broken = sum(b and not a for b, a in zip(before, after))
    n, k = fixed + broken, min(fixed, broken)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"before": sum(before) / len(before), "after": sum(after) / len(after), "fixed": fixed,
            "broken": broken, "sign_test_p": p}


def build_models(out: Path, sizes: Sizes) -> tuple[str, str, dict]:
    """(policy path, judge path, facts): the weak policy, its samples and the judging data, then the judge."""
    import rewardhub

    common = {"threads": 2, "overwrite": True, "save_every": 0, "eval_every": 0, "log_every": 100}
    train = arithmetic_rows("train", 5000, teacher_error=TEACHER_ERROR)
    test = arithmetic_rows("test", 100, seed=1)
    policy = rewardhub.sft(model="builtin:tiny-llama", data=train, eval_data=test, reward="verifier",
                           out=str(out / "policy-sft"), max_steps=sizes.policy_sft_steps, batch_size=64, lr=3e-3,
                           eval_size=100, eval_max_new_tokens=6, **common)
    rule = Rule()
    try:
        questions = random.Random(0).sample(train, sizes.judging_questions)
        samples = policy_samples(str(policy.model_path), questions, temperature=1.0, seed=0)
        examples = judging_examples(questions, samples, rule, seed=0)
    finally:
        rule.close()
    judge, facts = train_judge(out, examples, sizes)
    return str(policy.model_path), judge, {**facts, "policy_sft_steps": sizes.policy_sft_steps}


def train_judge(out: Path, examples: list[dict], sizes: Sizes) -> tuple[str, dict]:
    """The judge: its own BPE tokenizer (numbers as whole tokens that keep their newline), random init, SFT on
    the protected requests with the copy-then-verdict reply (:func:`judge_reply`), half of the rows verdict
    drills (:func:`drill_rows`)."""
    import rewardhub
    from rewardhub.models import load_tokenizer
    from rewardhub.tiny_model import build_bpe_tokenizer, build_tiny_model

    held, train = examples[:64], examples[64:]
    char_tokenizer = load_tokenizer("builtin:tiny-llama")  # only its chat template is used to build the corpus
    corpus = [row["prompt"] + row["completion"] for row in sft_rows(train, char_tokenizer)
              + drill_rows(train, char_tokenizer)]
    # "\n147" is one token: each answer is one token, found by token alone (not the digits of a nonce)
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=sizes.judge_vocab, model_max_length=JUDGE_POSITIONS,
                                    digits_per_token=3, number_takes_space=True)
    init = build_tiny_model(out / "judge-init", seed=3, tokenizer=tokenizer, max_position_embeddings=JUDGE_POSITIONS)
    rows = sft_rows(train, tokenizer)
    longest = max(len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in rows) + 1  # + EOS
    data = rows + drill_rows(train, tokenizer)
    random.Random(5).shuffle(data)
    judge = rewardhub.sft(model=str(init), data=data, eval_data=sft_rows(held, tokenizer), reward="exact-match",
                          out=str(out / "judge-sft"), max_steps=sizes.judge_sft_steps, batch_size=sizes.judge_batch,
                          lr=sizes.judge_lr, lr_scheduler="constant", max_length=min(longest, JUDGE_POSITIONS),
                          eval_size=64, eval_max_new_tokens=24, seed=2, threads=2, overwrite=True, save_every=0,
                          eval_every=0, log_every=100)
    facts = {"judging_rows": len(examples), "judge_request_tokens": longest,
             "judge_request_chars": max(len(r["prompt"]) for r in rows),
             "judge_sft_exact_reply": judge.metrics.get("reward_mean")}
    return str(judge.model_path), facts


def run(out: Path, sizes: Sizes, seeds: list[int], reuse: bool = False) -> dict:
    from rewardhub_judge.subprocess_server import served

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if reuse:  # the policy and judge an earlier run left in OUT: RL and the measurements again, nothing retrained
        policy, judge = str(out / "policy-sft" / "model"), str(out / "judge-sft" / "model")
        missing = [p for p in (policy, judge) if not Path(p).is_dir()]
        if missing:
            raise SystemExit(f"--reuse-models: {missing} not found; run once without it into --out {out}")
        facts = {"reused_models": True}
    else:
        policy, judge, facts = build_models(out, sizes)
    template_file = out / "judge-template.txt"
    template_file.write_text(TEMPLATE, encoding="utf-8")
    heldout = arithmetic_rows("test", max(sizes.eval_prompts, sizes.heldout_questions, sizes.sample_prompts))
    eval_rows = heldout[:sizes.eval_prompts]
    report: dict = {"sizes": vars(sizes), **facts, "seeds": {}}
    rule = Rule()
    try:
        before = greedy_correct(policy, eval_rows, rule)
        report["policy_before"] = sum(before) / len(before)
        with served(judge, out / "judge-server.log", served_name=JUDGE_NAME, start_timeout=120) as url:
            run_against_judge(url, out, sizes, seeds, policy, template_file, heldout, before, rule, report)
        for seed in seeds:  # the same RL against the rule itself: what a judge that never errs would give
            path, _ = grpo(out / f"grpo-rule-seed{seed}", "verifier", {}, policy, eval_rows, sizes, seed)
            report["seeds"][seed]["rule_arm"] = paired(before, greedy_correct(path, eval_rows, rule))
    finally:
        rule.close()
    report["minutes"] = (time.monotonic() - t0) / 60
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def grpo(out: Path, reward: str, reward_args: dict, policy: str, eval_rows: list[dict], sizes: Sizes,
         seed: int) -> tuple[str, dict]:
    """One GRPO run from the policy, on the train questions (their gold ``answer`` is what the judge and the
    rule read): the trained model's path and the run's metrics."""
    import rewardhub

    rl = rewardhub.train(
        algo="grpo", reward=reward, reward_args=reward_args, model=policy, data=arithmetic_rows("train", 5000),
        eval_data=eval_rows[:64], out=str(out), seed=seed, max_steps=sizes.rl_steps, sft_warmup_steps=0,
        batch_size=sizes.rl_prompts, num_generations=sizes.num_generations, max_new_tokens=6,
        temperature=sizes.rl_temperature, lr=sizes.rl_lr, kl_coef=0.0, eval_size=64, eval_every=0, save_every=0,
        log_every=10, completions_every=10, threads=1, max_failure_rate=sizes.max_failure_rate, overwrite=True)
    return str(rl.model_path), rl.metrics


def run_against_judge(url: str, out: Path, sizes: Sizes, seeds: list[int], policy: str, template_file: Path,
                      heldout: list[dict], before: list[bool], rule: Rule, report: dict) -> None:
    """The judge's held-out agreement, then one GRPO run per seed against it; results go into ``report``."""
    from rewardhub.reward_resolution import build_reward

    args = judge_reward_args(url, template_file)
    eval_rows = heldout[:len(before)]
    sample_rows = heldout[:sizes.sample_prompts]

    def judge_on_samples(model: str) -> dict:
        """The judge against the rule on ``model``'s temperature-1 samples of the sample prompts."""
        samples = policy_samples(model, sample_rows, temperature=1.0, seed=2)
        provider = build_reward("judge", args)
        try:
            return judge_agreement(provider, [{"row": r, "completion": c, "right": ok} for r, c, ok in
                                              zip(sample_rows, samples, rule(sample_rows, samples))])
        finally:
            provider.close()

    questions = heldout[:sizes.heldout_questions]
    samples = policy_samples(policy, questions, temperature=1.0, seed=1)
    provider = build_reward("judge", args)
    try:
        report["judge_heldout"] = judge_agreement(provider, judging_examples(questions, samples, rule, 1,
                                                                             balance=False))
    finally:
        provider.close()
    report["judge_on_policy_before"] = judge_on_samples(policy)
    print(f"judge on held-out judging examples: {report['judge_heldout']}", flush=True)
    for seed in seeds:
        path, metrics = grpo(out / f"grpo-judge-seed{seed}", "judge", args, policy, eval_rows, sizes, seed)
        report["seeds"][seed] = {
            "judge_arm": paired(before, greedy_correct(path, eval_rows, rule)),
            "judge_reward_before": metrics.get("before/reward_mean"),
            "judge_reward_after": metrics.get("after/reward_mean"),
            "judge_on_policy_after": judge_on_samples(path)}
        print(f"seed {seed}: rule accuracy {report['policy_before']:.1%} -> "
              f"{report['seeds'][seed]['judge_arm']['after']:.1%}", flush=True)


def summary(report: dict) -> str:
    h = report["judge_heldout"]
    p = report["judge_on_policy_before"]
    lines = [
        f"judge vs the rule, held-out judging examples: {h['agreement']:.1%} agreement on {h['n']} "
        f"({h['on_right']:.1%} of {h['n_right']} right answers, {h['on_wrong']:.1%} of {h['n'] - h['n_right']} "
        f"wrong ones; {h['failed']} unparseable)",
        f"judge vs the rule, the policy's own samples before RL: {p['agreement']:.1%} of {p['n']} "
        f"(rule: {p['rule_says_right']:.1%} right, judge: {p['judge_says_right']:.1%})",
        f"policy under the rule, greedy, {report['sizes']['eval_prompts']} held-out prompts: "
        f"before RL {report['policy_before']:.1%}"]
    for seed, s in report["seeds"].items():
        for arm, name in (("judge_arm", "the judge"), ("rule_arm", "the rule itself")):
            if arm in s:
                a = s[arm]
                lines.append(f"  seed {seed}: {report['sizes']['rl_steps']} GRPO steps against {name}: "
                             f"{a['after']:.1%} (gain {a['after'] - a['before']:+.1%}; {a['fixed']} answers fixed, "
                             f"{a['broken']} broken, sign test p={a['sign_test_p']:.2g})")
        a = s["judge_on_policy_after"]
        lines.append(f"    judge's held-out reward {s['judge_reward_before']:.3f} -> {s['judge_reward_after']:.3f}; "
                     f"judge vs rule on the new policy's samples {a['agreement']:.1%} "
                     f"(rule: {a['rule_says_right']:.1%} right)")
    lines.append(f"({report['minutes']:.1f} minutes)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: the pipeline end to end, not the result")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="RL seeds (one RL run each)")
    parser.add_argument("--rl-steps", type=int, help="override the number of GRPO steps")
    parser.add_argument("--out", default="runs/rlaif-measured")
    parser.add_argument("--reuse-models", action="store_true",
                        help="reuse the policy and judge an earlier run wrote into --out (RL and measurements only)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.rl_steps:
        sizes.rl_steps = args.rl_steps
    report = run(Path(args.out), sizes, args.seeds, reuse=args.reuse_models)
    print(summary(report))
    return report


if __name__ == "__main__":
    main()
