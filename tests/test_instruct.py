"""llmbook.instruct: prompt format, splits, collate, responses, JSON, ROUGE, judge."""

import http.server
import json
import threading
import time

import pytest
import torch

from llmbook.data import data_file
from llmbook.instruct import (
    InstructionDataset,
    JudgeScores,
    JudgeStopped,
    ask_judge,
    check_entries,
    create_instruction_loaders,
    extract_response,
    format_input,
    format_response,
    generate_responses,
    instruction_collate,
    judge_available,
    load_instruction_splits,
    parse_score,
    read_entries,
    rouge_l,
    score_responses,
    split_entries,
)
from llmbook.model import GPTConfig, GPTModel
from llmbook.skills import number_in_words, skill_entry, skill_splits
from llmbook.tokenizer import gpt2_tokenizer
from llmbook.train import TrainingConfig, train_model
from tiny import BYTES, tiny_config

PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request."
)
ENTRY = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}


def test_prompt_format_is_exactly_alpaca():
    assert format_input(ENTRY) == (
        f"{PREAMBLE}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3"
    )
    no_input = {**ENTRY, "input": ""}
    assert format_input(no_input) == f"{PREAMBLE}\n\n### Instruction:\nAdd the numbers."
    assert format_input({"instruction": "x", "output": "y"}).endswith("x")
    assert format_response(ENTRY) == "\n\n### Response:\n5"


def test_splits_are_deterministic_and_sized():
    train, val, test = load_instruction_splits()
    # The file's 1,100 entries: int(0.85 * 1100) = 935, int(0.05 * 1100) = 55 for
    # testing, and the other 110 for validation.
    assert (len(train), len(val), len(test)) == (935, 110, 55)
    everything = json.loads(data_file("instruction-data.json").read_text("utf-8"))
    assert train + val + test == everything
    assert load_instruction_splits() == (train, val, test)


@pytest.mark.parametrize(
    "entries, message",
    [
        ([ENTRY, {"input": "", "output": "y"}], "entry 1 has no 'instruction'"),
        ([ENTRY, ENTRY, {"instruction": "x", "input": ""}], "entry 2 has no 'output'"),
        ([{"instruction": "x", "output": "  "}], "entry 0 has no 'output'"),
        ([ENTRY, "text"], "entry 1 is a str"),
        ([{**ENTRY, "input": 3}], "entry 0 has an 'input' that is not text"),
    ],
)
def test_entries_missing_fields_are_named(entries, message):
    with pytest.raises(ValueError, match=message):
        check_entries(entries)
    with pytest.raises(ValueError, match=message):
        InstructionDataset(entries)


def test_collate_matches_the_worked_example():
    inputs, targets = instruction_collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, 50256, 50256, 50256],
        [7, 8, 9, 50256, 50256],
    ]
    assert targets.tolist() == [
        [1, 2, 3, 4, 50256],
        [6, 50256, -100, -100, -100],
        [8, 9, 50256, -100, -100],
    ]


def test_collate_masks_prompts_and_cuts_to_the_allowed_length():
    batch = [([10, 11, 12, 13, 14], 3), ([20, 21, 22], 2)]
    inputs, targets = instruction_collate(batch, mask_prompt=True)
    assert targets.tolist() == [
        [-100, -100, 13, 14, 50256],
        [-100, 22, 50256, -100, -100],
    ]
    inputs, targets = instruction_collate(batch, allowed_max_length=4)
    assert inputs.shape == targets.shape == (2, 4)
    assert inputs[0].tolist() == [10, 11, 12, 13]
    _, ignored = instruction_collate([[1, 2]], ignore_index=-1, pad_token_id=0)
    assert ignored.tolist() == [[2, 0]]
    with pytest.raises(
        ValueError, match="item 0: its prompt has 3 tokens.*allowed_max_length=2"
    ):
        instruction_collate(batch, allowed_max_length=2)
    _, exact = instruction_collate(
        [([1, 2, 3, 4], 3)], allowed_max_length=3, mask_prompt=True
    )
    assert exact.tolist() == [[-100, -100, 4]]  # the first response token stays
    with pytest.raises(ValueError, match="mask_prompt needs"):
        instruction_collate([[1, 2, 3]], mask_prompt=True)


def test_dataset_knows_where_the_prompt_ends():
    tokenizer = gpt2_tokenizer()
    ids, prompt_length = InstructionDataset([ENTRY])[0]
    assert tokenizer.decode(ids[:prompt_length]) == format_input(ENTRY)
    assert tokenizer.decode(ids[prompt_length:]) == format_response(ENTRY)


def test_ignored_targets_do_not_change_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    targets = torch.tensor([1, 2, 3, -100, -100])
    full = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(
        full, torch.nn.functional.cross_entropy(logits[:3], targets[:3])
    )


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.preset("debug", context_length=128))


def test_finetuning_on_entries_lowers_the_validation_loss():
    # Byte-level tokens (tests/tiny.py): GPT-2's ids are not the point here, and its
    # output layer would be most of the time. The longest entry has 283 bytes.
    train, val, _ = load_instruction_splits()
    eot = BYTES.special_tokens["<|endoftext|>"]
    train_loader, val_loader = create_instruction_loaders(
        train[:48], val[:8], BYTES, batch_size=8, pad_token_id=eot
    )
    assert len(train_loader) == 6
    torch.manual_seed(0)
    model = GPTModel(tiny_config(context_length=512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        TrainingConfig(num_epochs=3, eval_freq=3, eval_iter=None, progress=False),
    )
    assert history.val_losses[-1] < history.val_losses[0] - 1.0


def test_responses_stop_at_end_of_text_and_are_extracted():
    prompt = format_input(ENTRY)
    generated = prompt + "\n\n### Response:\n 5 apples <|endoftext|>more"
    assert extract_response(generated, prompt) == "5 apples"
    with pytest.raises(ValueError, match="does not start with the prompt"):
        extract_response("something else", prompt)
    model = tiny_model().train()
    answered = generate_responses(
        model, [ENTRY, {**ENTRY, "input": ""}], max_new_tokens=5
    )
    assert model.training  # the mode is restored
    assert [set(e) for e in answered] == [{*ENTRY, "model_response"}] * 2
    assert all("<|endoftext|>" not in e["model_response"] for e in answered)
    assert "model_response" not in ENTRY  # the input entries are not changed
    long = {**ENTRY, "input": "word " * 200}
    with pytest.raises(ValueError, match="entry 0: its prompt has .* context of 128"):
        generate_responses(model, [long])


def test_rouge_l_is_one_for_a_copy_and_lower_for_less():
    text = "The cat sat on the mat."
    same = {"output": text, "model_response": text}
    other = {**same, "model_response": "A dog."}
    half = {**same, "model_response": "The cat."}
    assert rouge_l([same]) == pytest.approx(1.0)
    assert rouge_l([other]) == 0.0
    assert 0 < rouge_l([half]) < 1
    assert rouge_l([same, other]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one entry"):
        rouge_l([])


@pytest.mark.parametrize(
    "answer, score",
    [
        ("85", 85),
        ("Score: 72/100", 72),
        ("I'd give it 90.", 90),
        ("100", 100),
        ("good", None),
        ("1000", None),
        ("7.5 out of 10", 75),  # other scales are put on 0 to 100
        ("Score: 8/10", 80),
        ("4 out of 5 stars", 80),
        ("12/10", None),  # past the top of its scale: no score
        ("120/100", None),  # not 100, the next number
        ("Score: 120, or 100 at most", None),
        ("2/0", None),
        ("Score: -20", None),  # below the scale: no score, not 20
        ("I'd say 3 of 5 points; overall about 60.", 60),
        ("-", None),
        ("0", 0),
    ],
)
def test_parse_score(answer, score):
    assert parse_score(answer) == score


class JudgeServer(http.server.BaseHTTPRequestHandler):
    """A stand-in judge speaking Ollama's and OpenAI's chat protocols."""

    answers: list[str] = []
    requests: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 (the name http.server calls)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        JudgeServer.requests.append((self.path, body))
        text = JudgeServer.answers[(len(JudgeServer.requests) - 1) % len(self.answers)]
        if self.path == "/api/chat":
            reply = {
                "model": body["model"],
                "done": True,
                "message": {"role": "assistant", "content": text},
            }
        elif self.path == "/v1/chat/completions":
            reply = {
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}}
                ],
            }
        else:
            self.send_error(404)
            return
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def serving(handler):
    """A loopback HTTP server answering with `handler`, in a thread; yields its
    URL and stops it afterwards (a fixture's body)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a handler still trickling does not hold it up
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def judge():
    JudgeServer.requests.clear()
    yield from serving(JudgeServer)


ANSWERED = [{**ENTRY, "model_response": r} for r in ["5", "six", "5.0"]]


@pytest.mark.parametrize(
    "api, path", [("ollama", "/api/chat"), ("openai", "/v1/chat/completions")]
)
def test_score_responses_over_http(judge, api, path):
    JudgeServer.answers = ["90", "Score: 10/100", "I cannot tell."]
    result = score_responses(ANSWERED, url=judge, model="judge-model", api=api)
    assert isinstance(result, JudgeScores)
    assert result.scores == [90, 10, None]
    assert result.missing == 1 and result.mean == 50.0
    assert result.answers[2] == "I cannot tell."
    assert [p for p, _ in JudgeServer.requests] == [path] * 3
    body = JudgeServer.requests[1][1]
    assert body["model"] == "judge-model"
    assert body["messages"][0]["role"] == "user"
    content = body["messages"][0]["content"]
    assert format_input(ENTRY) in content and "`six`" in content
    assert "0 to 100" in content
    if api == "ollama":
        assert body["stream"] is False
    assert judge_available(judge)


def test_a_judge_without_numbers_gives_no_mean(judge):
    JudgeServer.answers = ["fine"]
    result = score_responses(ANSWERED[:2], url=judge, model="m")
    assert result.scores == [None, None] and result.missing == 2
    assert result.mean is None


def test_a_judge_that_does_not_answer_is_named(judge):
    with pytest.raises(
        ConnectionError,
        match=r"no judge answers at "
        r"http://127.0.0.1:9 .*ollama serve",
    ):
        score_responses(ANSWERED, url="http://127.0.0.1:9", model="m")
    with pytest.raises(ConnectionError, match="OpenAI-compatible server"):
        score_responses(ANSWERED, url="http://127.0.0.1:9", model="m", api="openai")
    assert not judge_available("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="api must be one of"):
        score_responses(ANSWERED, url=judge, model="m", api="anthropic")
    JudgeServer.answers = ["1"]
    with pytest.raises(RuntimeError, match="answered 404"):
        ask_judge("hi", judge + "/nowhere", "m")


class OddJudge(http.server.BaseHTTPRequestHandler):
    """A judge that misbehaves as `mode` says, after `good` proper answers."""

    mode = "trickle"
    good = 0
    served = 0

    def do_POST(self):  # noqa: N802 (the name http.server calls)
        self.rfile.read(int(self.headers["Content-Length"]))
        OddJudge.served += 1
        if OddJudge.served <= OddJudge.good:
            return self.reply(json.dumps({"message": {"content": "60"}}).encode())
        if OddJudge.mode == "redirect":
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:1/api/chat")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif OddJudge.mode == "fail":
            self.send_error(500)
        elif OddJudge.mode == "slow-headers":  # the status line, a byte at a time
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" * 20:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        elif OddJudge.mode == "not-http":  # another kind of server altogether
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        elif OddJudge.mode == "trickle":  # a byte now and then, never the end
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.reply(
                {
                    "html": b"<html>Welcome</html>",
                    "latin1": '{"message": {"content": "caf\xe9"}}'.encode("latin-1"),
                    "number": b'{"message": {"content": 70}}',
                }[OddJudge.mode]
            )

    def reply(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_judge():
    OddJudge.good = OddJudge.served = 0
    yield from serving(OddJudge)


@pytest.mark.parametrize("mode", ["trickle", "slow-headers"])
def test_a_judge_that_trickles_its_reply_is_given_up_on_in_time(odd_judge, mode):
    OddJudge.mode = mode
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="did not answer within 0.5 s"):
        ask_judge("hi", odd_judge, "m", timeout=0.5)
    assert time.monotonic() - start < 3  # not the ten seconds it would trickle


def test_a_server_that_is_no_judge_is_named(odd_judge):
    OddJudge.mode = "not-http"
    with pytest.raises(ConnectionError, match="does not answer as a judge would"):
        ask_judge("hi", odd_judge, "m")
    OddJudge.mode, OddJudge.good, OddJudge.served = "html", 1, 0
    assert ask_judge("hi", odd_judge.replace("http", "HTTP"), "m") == "60"
    with pytest.raises(ValueError, match=r"the judge's URL 'http://\[::1' is not one"):
        ask_judge("hi", "http://[::1", "m")


@pytest.mark.parametrize("mode", ["html", "latin1", "number"])
def test_a_reply_that_is_no_answer_is_named(odd_judge, mode):
    OddJudge.mode = mode
    with pytest.raises(RuntimeError, match="sent a reply without an answer in the"):
        ask_judge("hi", odd_judge, "m")


def test_judge_addresses_and_entries_are_checked(odd_judge):
    OddJudge.mode = "redirect"
    with pytest.raises(RuntimeError, match="redirects to http://127.0.0.1:1/api/chat"):
        ask_judge("hi", odd_judge, "m")
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        ask_judge("hi", "localhost:11434", "m")
    OddJudge.served = 0
    unanswered = [ANSWERED[0], {**ANSWERED[1], "model_response": 5}]
    with pytest.raises(ValueError, match="entry 1 has no model_response text"):
        score_responses(unanswered, url=odd_judge, model="m")
    assert OddJudge.served == 0  # checked before anything was asked


def test_a_judge_that_stops_partway_keeps_the_scores_so_far(odd_judge):
    OddJudge.mode, OddJudge.good = "fail", 2
    with pytest.raises(JudgeStopped, match=r"answered 500 .*after 2 of 3") as stopped:
        score_responses(ANSWERED, url=odd_judge, model="m")
    assert stopped.value.scores.scores == [60, 60]


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (20, "twenty"),
        (47, "forty-seven"),
        (99, "ninety-nine"),
    ],
)
def test_numbers_in_words(n, words):
    assert number_in_words(n) == words


def test_number_in_words_refuses_what_it_cannot_write():
    for n in (-1, 100):
        with pytest.raises(ValueError, match="0 to 99"):
            number_in_words(n)


def test_skill_answers_are_right():
    import random

    rng = random.Random(0)
    for _ in range(50):
        entry = skill_entry("reverse", rng)
        words = entry["instruction"].split(": ")[1].rstrip(".").split()
        assert entry["output"] == f"Reversed: {' '.join(words[::-1])}."
        entry = skill_entry("count", rng)
        assert entry["output"] == str(len(entry["input"].split()))
        entry = skill_entry("extract", rng)
        record = dict(field.split(": ") for field in entry["input"].split(", "))
        key = entry["instruction"].split()[3]
        assert entry["output"] == f"The {key} is {record[key]}."
    with pytest.raises(ValueError, match="unknown skill"):
        skill_entry("juggle", rng)


def test_skill_splits_hold_out_prompts_and_numbers():
    train, val, test = skill_splits(n_train=60, n_val=4, n_test=8, seed=5)
    assert (len(train), len(val), len(test)) == (300, 20, 40)
    prompts = [{format_input(e) for e in split} for split in (train, val, test)]
    assert not prompts[0] & prompts[1] and not (prompts[0] | prompts[1]) & prompts[2]
    assert len(prompts[2]) == len(test) and len(prompts[1]) == len(val)

    def numbers(split):
        return {int(e["input"]) for e in split if e["skill"] == "number"}

    assert len(numbers(test)) == 8 and not numbers(test) & numbers(train + val)
    assert all(21 <= n <= 99 and n % 10 for n in numbers(test))
    assert skill_splits(n_train=60, n_val=4, n_test=8, seed=5)[2] == test
    assert skill_splits(n_train=60, n_val=4, n_test=8, seed=6)[2] != test
    with pytest.raises(ValueError, match="at most 72"):
        skill_splits(n_val=40, n_test=40)


def test_a_file_of_entries_is_read_with_checks_and_split_in_order(tmp_path):
    entries = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(20)]
    (tmp_path / "ok.json").write_text(json.dumps(entries))
    assert read_entries(tmp_path / "ok.json") == entries
    train, val, test = split_entries(entries, 0.85, 0.05)
    assert (len(train), len(val), len(test)) == (17, 2, 1)
    assert train + val + test == entries  # in order, nothing lost
    for name, content, message in [
        ("a.json", "[1, 2", "a.json: not JSON in UTF-8"),
        ("b.json", "{}", "b.json: expected a non-empty JSON list"),
        ("c.json", "[]", "c.json: expected a non-empty JSON list"),
        ("d.json", '[{"instruction": "x"}]', "d.json: entry 0 has no 'output'"),
    ]:
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=message):
            read_entries(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_entries(tmp_path / "missing.json")
