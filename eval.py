"""Evaluate a jirl checkpoint: python eval.py --checkpoint runs/dirl_quick (or --config ...).

The same as `jirl eval` (jirl/cli/eval.py): AP / F1 / IoU (a harmonizer: MSE / PSNR / fMSE)
overall and per subset beside the trivial baselines, written to eval.json.
"""

from jirl.cli import eval as eval_cli

if __name__ == "__main__":
    eval_cli.run()
