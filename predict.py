"""Find the inharmonious region of your photos: python predict.py --checkpoint CKPT --input DIR.

The same as `jirl predict` (jirl/cli/predict.py): per photo a probability mask, a binary mask,
an overlay (and with --harmonizer the harmonized photo) at the photo's own size.
"""

from jirl.cli import predict

if __name__ == "__main__":
    predict.run()
