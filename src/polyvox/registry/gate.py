"""The promotion gate: pure rules over an evaluation (``reports/evaluate/metrics.json``).

Every rule yields a :class:`Rule` (its value, its threshold, pass/fail and why), so a refusal says
exactly what failed. Rules about the champion apply when a champion exists; the first candidate
is judged on the absolute rules alone. A champion that exists but was not scored in this
evaluation fails the comparison rule: the gate never promotes without the comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from polyvox.config import PromoteSection


@dataclass(frozen=True)
class Rule:
    rule: str
    value: float | None
    threshold: float | None
    op: str  # "<=", ">=", "=="
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _check(rule: str, value: float | None, op: str, threshold: float, detail: str) -> Rule:
    if value is None:
        return Rule(rule, None, threshold, op, False, f"{detail}: not measured")
    passed = value <= threshold if op == "<=" else value >= threshold
    return Rule(rule, float(value), float(threshold), op, bool(passed), detail)


def judge(metrics: dict, cfg: PromoteSection, has_champion: bool) -> list[Rule]:
    """The gate's rules for the candidate in ``metrics`` (the evaluate stage's output)."""
    candidate = metrics["systems"]["candidate"]
    asr = metrics.get("asr", "pocketsphinx")  # evaluations before judges existed were all pocketsphinx's
    rules = [
        _check("speaker_similarity", candidate.get("speaker_similarity"), ">=", cfg.min_speaker_similarity,
               "speaker similarity to the real speaker's centroid"),
        _check("mcd_db", candidate.get("mcd_db"), "<=", cfg.max_mcd_db, "mel-cepstral distortion with DTW (dB)"),
        _check("rtf_one_thread", candidate.get("rtf_one_thread"), "<=", cfg.max_rtf, "real-time factor, one CPU thread"),
    ]
    if cfg.max_wer is not None:
        rules.append(_check("wer", candidate.get("wer"), "<=", cfg.max_wer, f"word error rate on the test split, heard by {asr}"))
    if cfg.min_mos is not None:
        rules.append(_check("mos", candidate.get("mos_ovrl"), ">=", cfg.min_mos,
                            "naturalness: DNSMOS overall (P.835) on the test split"))
    rules += _independent_judge(metrics, asr)
    if cfg.require_ensemble_gain:
        voice = metrics.get("candidate_voice", {})
        info = voice.get("info", {})
        if voice.get("kind") == "ensemble":
            best = min(info.get("member_scores", {}).values(), default=None)
            score = info.get("ensemble_score")
            rules.append(Rule("ensemble_gain", score, best, "<", bool(score is not None and best is not None and score < best),
                              "validation score of the ensemble vs its best member (lower is better)"))
        else:
            rules.append(Rule("ensemble_gain", None, None, "==", True,
                              "single-member candidate (the ensemble did not beat it, or there was none)"))
    if has_champion:
        difference = metrics.get("difference", {}).get("wer")
        if difference is None:
            rules.append(Rule("wer_vs_champion", None, cfg.max_wer_increase, "<=", False,
                              "a champion exists but this evaluation did not score it"))
        else:
            rules.append(_check("wer_vs_champion", difference["high"], "<=", cfg.max_wer_increase,
                                f"upper end of the {difference.get('confidence', 0.95):.0%} bootstrap interval of "
                                f"WER(candidate) − WER(champion), heard by {asr} "
                                f"(difference {difference['difference']:+.3f})"))
    return rules


def _independent_judge(metrics: dict, asr: str) -> list[Rule]:
    """A conversion member hears the teacher with its content model; a judge that is the same model
    would grade the voice with the ear it was built for, and forgive exactly its errors. The rule
    applies to candidates with conversion members (none: no rule)."""
    members = metrics.get("candidate_voice", {}).get("members", [])
    content = {m["content_model"]["sha256"]: m["content_model"].get("name", "?") for m in members if m.get("content_model")}
    if not content:
        return []
    judge = metrics.get("asr_sha256")
    same = content.get(judge) if judge else None
    return [Rule("independent_judge", None, None, "==", judge is not None and same is None,
                 f"the judge ({asr}) is not the content model of a conversion member "
                 f"({', '.join(sorted(set(content.values())))})"
                 + (f": it IS {same} — judge with another model (evaluate.whisper_model) or another content "
                    "model (features.content.model)" if same else "" if judge else ": the judge's model is not recorded"))]


def passed(rules: list[Rule]) -> bool:
    return all(rule.passed for rule in rules)
