"""Write ``.dvc/offline-plots.html``: the page template ``dvc plots show`` fills (``.dvc/config``:
``plots.html_template``), with Vega, Vega-Lite and vega-embed inline instead of DVC's CDN links, so
the plots render with no network (issue 32 §4).

    .venv/bin/python scripts/offline_plots.py [--check]

The JavaScript is vl-convert-python's bundle (pinned in requirements.lock; a dev dependency: only
this script needs it). ``--check`` exits 1 when the committed template is not what this version
writes (tests/test_orchestration.py runs it). DVC writes Vega-Lite 5 specs: the bundle is 5.20.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".dvc" / "offline-plots.html"
VEGA_LITE = "5.20"  # DVC's templates say vega-lite/v5


def template() -> str:
    import vl_convert

    # vegaEmbed is a global the plots' own inline scripts call as the page is parsed: a classic script
    bundle = vl_convert.javascript_bundle(snippet="window.vegaEmbed = vegaEmbed;", vl_version=VEGA_LITE)
    if "</script" in bundle.lower() or any("{" + p + "}" in bundle for p in ("plot_divs", "scripts", "refresh_tag")):
        raise SystemExit("the bundle holds </script> or a DVC placeholder: it cannot be inlined as it is")
    about = (f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, vega-embed {vl_convert.get_vega_embed_version()}"
             f" inline (vl-convert-python {vl_convert.__version__}; scripts/offline_plots.py): no CDN")
    # DVC replaces {refresh_tag} and {plot_divs}; without {scripts}, its CDN <script> tags are left out
    return ("<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset=\"utf-8\">\n"
            f"    <title>DVC plots</title>\n    <!-- {about} -->\n    <script type=\"text/javascript\">\n{bundle}\n"
            "    </script>\n    <style>\n        table { border-spacing: 15px; }\n    </style>\n</head>\n<body>\n"
            "    {plot_divs}\n</body>\n</html>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed template is out of date")
    args = parser.parse_args()
    text = template()
    if args.check:
        current = TEMPLATE.read_text(encoding="utf-8") if TEMPLATE.is_file() else ""
        if current != text:
            sys.exit(f"{TEMPLATE} is not what vl-convert-python writes here: run scripts/offline_plots.py")
        return
    temporary = TEMPLATE.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(TEMPLATE)
    print(f"wrote {TEMPLATE} ({len(text) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
