"""metrics_reference.py — the established implementations of LLMs-train's evaluation metrics (test-only).

Reads one JSON object on stdin and prints one JSON object on stdout, computed with
  sacrebleu   corpus_bleu(hyps, [refs], tokenize='zh' | '13a')   (defaults: exp smoothing, no lowercasing)
  rouge-score RougeScorer(['rouge1', 'rouge2', 'rougeL']); for Chinese with a tokenizer that returns the
              characters of " ".join(list(text)).split() (as PromptCBLUE-style evaluation feeds rouge), for
              English rouge-score's default tokenizer (no stemming)
  sklearn     accuracy_score and f1_score(labels=L, average='micro' | 'macro', zero_division=0)

Input:  {"bleu":  [{"lang": "zh"|"en", "hyps": [...], "refs": [...]}, ...],
         "rouge": [{"lang": "zh"|"en", "target": str, "prediction": str}, ...],
         "f1":    [{"y_true": [...], "y_pred": [...], "labels": [...]}, ...]}
Output: {"bleu": [score/100, ...], "rouge": [[r1, r2, rL], ...], "f1": [[accuracy, micro, macro], ...],
         "versions": {...}}
"""
import importlib.metadata
import json
import sys

import sacrebleu
import sklearn
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score


class CharTokenizer:
    def tokenize(self, text):
        return " ".join(list(text)).split()


def main():
    req = json.load(sys.stdin)
    out = {"bleu": [], "rouge": [], "f1": []}
    for c in req.get("bleu", []):
        tok = "zh" if c["lang"] == "zh" else "13a"
        out["bleu"].append(sacrebleu.corpus_bleu(c["hyps"], [c["refs"]], tokenize=tok).score / 100.0)
    zh = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=CharTokenizer())
    en = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for c in req.get("rouge", []):
        s = (zh if c["lang"] == "zh" else en).score(c["target"], c["prediction"])
        out["rouge"].append([s["rouge1"].fmeasure, s["rouge2"].fmeasure, s["rougeL"].fmeasure])
    for c in req.get("f1", []):
        yt, yp, labels = c["y_true"], c["y_pred"], c["labels"]
        out["f1"].append([
            accuracy_score(yt, yp),
            f1_score(yt, yp, labels=labels, average="micro", zero_division=0),
            f1_score(yt, yp, labels=labels, average="macro", zero_division=0),
        ])
    out["versions"] = {"sacrebleu": sacrebleu.__version__, "sklearn": sklearn.__version__,
                       "rouge_score": importlib.metadata.version("rouge-score")}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
