"""The main command's last step: every model's digits samples (benchmarks/results/<model>-digits/samples.png, written
by its `python -m fastar train`) in one picture with what each shows, benchmarks/results/history/digits.png, which
README.md displays; the date and CPU of the run are in its title.

    python -m benchmarks.digits [RESULTS_DIR] [OUT]
"""
import platform
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# (folder, caption): what the grid's cells are
MODELS = (("var", "VAR: classes 0-9 by column (tokenizer and VAR trained here)"),
          ("mar", "MAR: classes 0-9 by column (KL VAE and MAR with its diffusion head trained here)"),
          ("fractalgen", "FractalGen (FractalMAR, 3 levels, 8 x 8 pixels): classes 0-9 by column"),
          ("hit", "HiT GAN: 32 fixed latents, unconditional (EMA generator)"),
          ("dalle", "DALL-E: captions \"a handwritten zero\" ... \"nine\" by column (dVAE and transformer trained here)"))
LABEL_H, PAD = 22, 8


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def montage(results, out):
    results = Path(results)
    missing = [str(results / f"{m}-digits" / "samples.png") for m, _ in MODELS
               if not (results / f"{m}-digits" / "samples.png").exists()]
    if missing:
        raise SystemExit(f"benchmarks.digits: no samples at {', '.join(missing)} (run the trainings of "
                         "scripts/bench.sh first)")
    grids = [(caption, Image.open(results / f"{m}-digits" / "samples.png").convert("RGB")) for m, caption in MODELS]
    try:
        font = ImageFont.load_default(size=14)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError):
        font = ImageFont.load_default()
    title = f"fastar: each model trained for minutes on scikit-learn's digits ({time.strftime('%Y-%m-%d')}, {cpu_name()})"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(*(g.width for _, g in grids), *(measure.textlength(t, font=font) for t in (title, *dict(MODELS).values())))
    width = int(width) + 2 * PAD
    height = LABEL_H + sum(LABEL_H + g.height + PAD for _, g in grids) + PAD
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((PAD, 4), title, fill="black", font=font)
    y = LABEL_H
    for caption, g in grids:
        draw.text((PAD, y + 5), caption, fill=(40, 40, 160), font=font)
        img.paste(g, (PAD, y + LABEL_H))
        y += LABEL_H + g.height + PAD
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    print(f"wrote {out} ({width} x {height})")


if __name__ == "__main__":
    args = sys.argv[1:]
    montage(args[0] if args else "benchmarks/results", args[1] if len(args) > 1 else
            "benchmarks/results/history/digits.png")
