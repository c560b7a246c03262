"""The local-model judge: number probabilities by hand on a bigram model,
against a naive teacher-forced loop on tiny models and the default model,
and the judge's rule and errors."""

import math
from types import SimpleNamespace

import pytest
import torch

from actlab import ActlabError
from actlab.judges import Judgement, make_judge
from actlab.judges.local import LocalJudge, number_pieces, number_probabilities

PROMPT = "Question: {question}\nAnswer: {answer}\nScore from 0 to 100:"


class Bigram(torch.nn.Module):
    """Next-token distribution set by the last token alone (`rows`, else
    `default`), so every reply's probability can be worked out by hand.
    Hands back a cache that it never reads."""

    def __init__(self, rows: dict[int, dict[int, float]], default: dict[int, float], vocab: int):
        super().__init__()
        self.rows, self.default, self.vocab = rows, default, vocab

    def forward(self, input_ids, past_key_values=None, logits_to_keep=0, **_):
        logits = torch.full((*input_ids.shape, self.vocab), -math.inf)
        for index in torch.cartesian_prod(*map(torch.arange, input_ids.shape)).reshape(-1, 2).tolist():
            for token, p in self.rows.get(int(input_ids[tuple(index)]), self.default).items():
                logits[tuple(index) + (token,)] = math.log(p)
        return SimpleNamespace(logits=logits, past_key_values=SimpleNamespace(reorder_cache=lambda i: None))


def test_number_probabilities_by_hand(tokenizer):
    tid = {t: tokenizer.convert_tokens_to_ids(t) for t in ("0", "1", "2", "4", "8", "Ġ", "!")}
    start = tokenizer("Score:", add_special_tokens=False)["input_ids"][-1]
    rows = {start: {"4": 0.5, "8": 0.2, "Ġ": 0.1, "1": 0.1, "!": 0.1},
            tid["4"]: {"2": 0.6, "!": 0.4},              # "4" then "2" (42) or stop (4)
            tid["Ġ"]: {"8": 1.0},                        # " 8" counts for 8
            tid["1"]: {"0": 0.5, "!": 0.5},              # "10" ...
            tid["0"]: {"0": 0.2, "4": 0.3, "!": 0.5}}    # "100"; after "10", "104" is no number
    bigram = Bigram({row: {tid[t]: p for t, p in dist.items()} for row, dist in rows.items()},
                    {tid["!"]: 1.0}, len(tokenizer))  # other tokens: stop
    model = SimpleNamespace(hf_model=bigram, tokenizer=tokenizer, pad_id=0, device=torch.device("cpu"))
    got = number_probabilities(model, ["Score:"], min_path_prob=0.0)[0]
    # 8 stops after "8" (row "8" is the default: stop), so P(8) = 0.2 + 0.1 * 1.0
    expected = {"4": 0.5 * 0.4, "42": 0.5 * 0.6, "8": 0.3, "1": 0.1 * 0.5,
                "10": 0.1 * 0.5 * (1 - 0.2 - 0.3), "100": 0.1 * 0.5 * 0.2 * (1 - 0.2 - 0.3)}
    assert got.keys() == expected.keys()
    for n, p in expected.items():
        assert got[n] == pytest.approx(p, rel=1e-6), n
    # paths below min_path_prob are not expanded
    assert "100" not in number_probabilities(model, ["Score:"], min_path_prob=0.02)[0]
    # SmolLM2 writes numbers digit by digit, with "Ġ" for a leading space
    pieces = number_pieces(tokenizer, len(tokenizer))
    assert sorted(pieces.texts) == [" "] + list("0123456789")
    assert int(pieces.continues.sum()) == 10 and bool(pieces.continues[tid["4"]])


def naive_number_probabilities(model, prompt: str, numbers) -> dict[str, float]:
    """One full forward pass per candidate reply (n's digits, or a space then
    the digits), no cache: the product of its tokens' probabilities times the
    probability that no digit follows."""
    tok = model.tokenizer
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    digit = torch.tensor([t[0] in "0123456789" for t in tok.convert_ids_to_tokens(list(range(len(tok))))])
    out = {}
    for n in numbers:
        total = 0.0
        for reply in (tok(n, add_special_tokens=False)["input_ids"],
                      [tok.convert_tokens_to_ids("Ġ")] + tok(n, add_special_tokens=False)["input_ids"]):
            ids = torch.tensor([prompt_ids + reply])
            with torch.no_grad():
                logp = torch.log_softmax(model.hf_model(input_ids=ids).logits[0].double(), -1)
            start = len(prompt_ids) - 1
            p = math.exp(sum(float(logp[start + i, t]) for i, t in enumerate(reply)))
            p *= 1 - float(logp[-1, : len(digit)][digit].exp().sum())
            total += p
        out[n] = total
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_number_probabilities_equal_a_naive_loop(tiny_models, arch):
    model = tiny_models[arch]
    prompts = ["Rate it: ", "A much longer prompt, so that the short one above is left-padded by many columns. Rate: "]
    got = number_probabilities(model, prompts, min_path_prob=0.0, max_paths=1000, batch_size=2)
    for prompt, probs in zip(prompts, got):
        expected = naive_number_probabilities(model, prompt, [str(n) for n in range(101)])
        assert probs.keys() == expected.keys()
        for n in expected:
            assert probs[n] == pytest.approx(expected[n], rel=1e-4), (arch, n)


def test_number_probabilities_on_the_default_model(default_model):
    texts = ["<|im_start|>user\nPick a number from 0 to 100.<|im_end|>\n<|im_start|>assistant\n",
             "Counting: 1, 2, 3, 4, 5, 6, 7, 8,"]
    every_path = number_probabilities(default_model, texts, min_path_prob=0.0, max_paths=1000)
    pruned = number_probabilities(default_model, texts)  # paths under 1e-4 left out
    for text, exact, probs in zip(texts, every_path, pruned):
        top = sorted(exact, key=exact.get, reverse=True)[:6]
        expected = naive_number_probabilities(default_model, text, top)
        for n in top:
            assert exact[n] == pytest.approx(expected[n], rel=1e-4), n
        # pruning (paths under 1e-4, beyond the 32 likeliest per step) only drops mass, and little
        assert all(p <= exact[n] * (1 + 1e-5) for n, p in probs.items())
        assert sum(probs.values()) >= sum(exact.values()) - 0.02
        assert all(probs[n] == pytest.approx(exact[n], abs=2e-4) for n in top[:3])
    assert max(pruned[1], key=pruned[1].get) == "9" and pruned[1]["9"] > 0.5


def test_local_judge_rule_and_errors(tiny_models, monkeypatch):
    import actlab.judges.local as local

    judge = make_judge({"kind": "local", "model": tiny_models["llama"]}, PROMPT)
    seen = []

    def fake(model, prompts, *args):
        seen.extend(prompts)
        return [{"80": 0.5, "60": 0.3, "7": 0.1}, {"90": 0.2}]

    monkeypatch.setattr(local, "number_probabilities", fake)
    results = judge.judge([("q1", "fine"), ("q2", "  "), ("q3", "so-so {x}")])
    assert results[0].score == pytest.approx((40 + 18 + 0.7) / 0.9)
    assert results[1] == Judgement(None, "empty answer")
    assert results[2].score is None and "0.20 < 0.25" in results[2].reason
    assert len(seen) == 2 and "Answer: so-so {x}" in seen[1] and seen[1].startswith("<|im_start|>")
    with pytest.raises(ActlabError, match="lacks {answer}"):
        LocalJudge("Score {question}")
    with pytest.raises(ActlabError, match="needs the trait's eval_prompt"):
        make_judge({"kind": "local"})
    with pytest.raises(ActlabError, match="judge 'local'"):
        make_judge({"kind": "local", "temperature": 1}, PROMPT)
    with pytest.raises(ActlabError, match="min_path_prob"):
        LocalJudge(PROMPT, min_path_prob=1.5)
