"""The evaluation's plots (PNG) and its one-file HTML report.

The report works offline: no CDN, no external file — images and audio are inlined as ``data:``
URIs, the style is inline, and every string (texts, hypotheses, ids, speaker names) is escaped
by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from polyvox.fileio import atomic_path, atomic_write_bytes

ORDER = ("candidate", "champion", "real")
COLOURS = {"candidate": "#1f77b4", "champion": "#ff7f0e", "real": "#2ca02c"}
# (metric, label, lower is better) rows of the summary table; {asr} is the judge's name
ROWS = [("wer", "WER ({asr})", True), ("cer", "CER ({asr})", True),
        ("wer_pocketsphinx", "WER (pocketsphinx, second opinion)", True),
        ("cer_pocketsphinx", "CER (pocketsphinx, second opinion)", True), ("mcd_db", "MCD-DTW, c1–c24 (dB)", True),
        ("log_f0_rmse_cents", "log-F0 RMSE (cents)", True), ("speaker_similarity", "speaker similarity (resemblyzer)", False),
        ("mos_ovrl", "DNSMOS overall", False), ("mos_sig", "DNSMOS signal", False), ("mos_bak", "DNSMOS background", False),
        ("rtf_one_thread", "real-time factor, 1 thread", True), ("rtf_all_threads", "real-time factor, all threads", True),
        ("parameters", "parameters", True), ("size_mb", "size on disk (MB)", True)]

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>polyvox evaluation</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.better{color:#1a7f37;font-weight:600}.worse{color:#b42318;font-weight:600}
.sample{border-top:1px solid #ddd;padding:1em 0}.sample audio{display:block;margin:.2em 0}
.sys{display:inline-block;vertical-align:top;margin-right:1.5em}img{max-width:100%}
code{background:#f6f6f6;padding:0 .2em}
</style></head><body>
<h1>polyvox evaluation</h1>
<p>{{ created }} · {{ metrics.utterances }} test utterances · speakers: {{ metrics.speakers|join(", ") }} ·
data version <code>{{ metrics.data_version }}</code> · evaluation took {{ "%.0f"|format(metrics.seconds) }} s on {{ metrics.machine }}</p>
<p>Candidate: {{ candidate.kind }} ({{ candidate.mode }}) of {{ candidate.members|map(attribute="name")|join(", ") }}.
{% if not has_champion %}No champion yet: the candidate is compared with the real recordings only.{% endif %}</p>
<h2>Summary</h2>
<table><tr><th class="l">metric</th>{% for s in systems %}<th>{{ s }}</th>{% endfor %}
{% if has_champion %}<th>candidate − champion [{{ "%.0f"|format(confidence * 100) }} % CI]</th>{% endif %}</tr>
{% for row in rows %}<tr><td class="l">{{ row.label }}</td>{% for value in row["values"] %}<td>{{ value }}</td>{% endfor %}
{% if has_champion %}<td class="{{ row.verdict }}">{{ row.difference }}</td>{% endif %}</tr>
{% endfor %}</table>
<p>WER and CER are corpus-level (errors over reference words/characters), as heard by {{ asr }}{% if second %}, with
{{ second }}'s figures beside them as a second opinion{% endif %}; the interval is a paired bootstrap over
utterances. Green: the candidate is better and the interval excludes 0; red: worse and the interval excludes 0.</p>
<h2>Plots</h2>
{% for name, uri in plots %}<p><img alt="{{ name }}" src="{{ uri }}"></p>{% endfor %}
<h2>Listen</h2>
{% for sample in samples %}<div class="sample"><p><b>{{ sample.id }}</b> ({{ sample.speaker }}): {{ sample.text }}</p>
{% for entry in sample.systems %}<div class="sys"><b>{{ entry.system }}</b>
<audio controls preload="none" src="{{ entry.audio }}"></audio>
<small>{{ asr }}: “{{ entry.hypothesis }}” · CER {{ "%.2f"|format(entry.cer) }}</small>
{% if entry.ps_hypothesis is not none %}<br><small>{{ second }}: “{{ entry.ps_hypothesis }}”</small>{% endif %}</div>{% endfor %}
<p><img alt="spectrograms of {{ sample.id }}" src="{{ sample.spectrogram }}"></p></div>
{% endfor %}
</body></html>
"""


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _format(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if metric == "parameters":
        return f"{value / 1e6:.2f} M"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def summary_plot(table: pd.DataFrame, systems: list[str], asr: str = "pocketsphinx") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("cer", f"CER per utterance ({asr})"), ("mcd_db", "MCD-DTW (dB)"), ("speaker_similarity", "speaker similarity"),
              ("mos_ovrl", "DNSMOS overall")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for axis, (column, title) in zip(axes, panels):
        shown = [s for s in systems if table.loc[table["system"] == s, column].notna().any()]
        data = [table.loc[table["system"] == s, column].dropna().to_numpy() for s in shown]
        if data:
            parts = axis.boxplot(data, patch_artist=True)
            axis.set_xticks(range(1, len(shown) + 1), shown)
            for patch, system in zip(parts["boxes"], shown):
                patch.set_facecolor(COLOURS.get(system, "#999"))
                patch.set_alpha(0.6)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def spectrogram_plot(waves: dict[str, tuple[np.ndarray, int]], title: str, audio=None) -> bytes:
    """Each system's mel spectrogram, one above the other; ``audio`` (the voice's AudioSection) sets
    the analysis, so the plot shows the mels the model was trained on (default: librosa's)."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(waves), 1, figsize=(9, 2.0 * len(waves)), squeeze=False)
    for axis, (system, (wave, rate)) in zip(axes[:, 0], waves.items()):
        analysis = {} if audio is None else {"n_fft": audio.n_fft, "hop_length": audio.hop_length,
                                              "win_length": audio.win_length, "n_mels": audio.n_mels,
                                              "fmin": audio.f_min, "fmax": audio.f_max}
        mel = librosa.feature.melspectrogram(y=wave, sr=rate, **analysis)
        axis.imshow(librosa.power_to_db(mel, ref=np.max), origin="lower", aspect="auto", cmap="magma",
                    extent=(0, len(wave) / rate, 0, mel.shape[0]))
        axis.set_ylabel(f"{system}\nmel band")
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].set_title(title)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def _wav_bytes(path: Path) -> tuple[bytes, np.ndarray, int]:
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), wave, rate


def write_report(metrics: dict, table: pd.DataFrame, rows: pd.DataFrame, out: Path, samples: int,
                 real_root: Path, audio=None) -> Path:
    """Plots to ``out/plots/``, the report to ``out/report.html``; returns the report's path.

    ``rows``: the test rows (id, speaker, clean_text, audio relative to ``real_root``)."""
    from jinja2 import Environment

    shown = [s for s in ORDER if s in metrics["systems"]]
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    asr, second = metrics.get("asr", "pocketsphinx"), metrics.get("asr_second_opinion")
    summary_png = summary_plot(table, shown, asr)
    atomic_write_bytes(plots_dir / "per_utterance.png", summary_png)

    difference = metrics.get("difference", {})
    table_rows = []
    for metric, label, lower_better in ROWS:
        values = [_format(metric, metrics["systems"][s].get(metric)) for s in shown]
        if all(v == "—" for v in values):
            continue
        entry = {"label": label.format(asr=asr), "values": values, "difference": "", "verdict": ""}
        if metric in difference:
            d = difference[metric]
            entry["difference"] = f"{d['difference']:+.3f}" + (f" [{d['low']:+.3f}, {d['high']:+.3f}]" if "low" in d else "")
            if "low" in d and not np.isnan(d["low"]) and (d["low"] > 0 or d["high"] < 0):
                improved = (d["high"] < 0) if lower_better else (d["low"] > 0)
                entry["verdict"] = "better" if improved else "worse"
        table_rows.append(entry)

    sample_entries = []
    for row in rows.drop_duplicates("clean_text").head(samples).itertuples():  # distinct sentences
        entries, waves = [], {}
        for system in shown:
            path = (out / "audio" / system / f"{row.id}.wav") if system != "real" else real_root / row.audio
            data, wave, rate = _wav_bytes(path)
            waves[system] = (wave, rate)
            scored = table[(table["system"] == system) & (table["id"] == row.id)].iloc[0]
            entries.append({"system": system, "audio": _data_uri(data, "audio/wav"), "hypothesis": scored["hypothesis"],
                            "cer": float(scored["cer"]), "ps_hypothesis": scored.get("ps_hypothesis") if second else None})
        spectrogram = spectrogram_plot(waves, f"{row.id} — {row.clean_text}", audio)
        atomic_write_bytes(plots_dir / f"spectrogram-{row.id}.png", spectrogram)
        sample_entries.append({"id": row.id, "speaker": row.speaker, "text": row.clean_text, "systems": entries,
                               "spectrogram": _data_uri(spectrogram, "image/png")})

    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        metrics=metrics, asr=asr, second=second, created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), systems=shown,
        rows=table_rows, has_champion="champion" in shown, confidence=next(
            (d["confidence"] for d in difference.values() if "confidence" in d), 0.95),
        candidate=metrics["candidate_voice"], plots=[("per-utterance distributions", _data_uri(summary_png, "image/png"))],
        samples=sample_entries)
    report = out / "report.html"
    with atomic_path(report) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return report
