"""llmbook.classify: spam splits, padding, the head, last-token logits, save/load."""

import dataclasses
import itertools

import pytest
import torch

from llmbook.checkpoint import load_model, save_model
from llmbook.classify import (
    ClassificationDataset,
    add_classification_head,
    calc_accuracy_loader,
    calc_classification_loss,
    classification_logits,
    classify,
    create_classification_loaders,
    distinct_texts,
    load_classifier,
    load_spam_splits,
    read_spam_collection,
    save_classifier,
)
from llmbook.data import data_file
from llmbook.labelled import read_labelled_texts
from llmbook.losses import calc_loss_loader
from llmbook.model import GPTConfig, GPTModel
from llmbook.train import TrainingConfig, train_model

CFG = GPTConfig.preset("debug", context_length=32)
PAD = 50256


def classifier(num_classes=2, trainable_blocks=1, seed=0, cfg=CFG):
    torch.manual_seed(seed)
    return add_classification_head(GPTModel(cfg), num_classes, trainable_blocks)


@pytest.fixture(scope="module")
def splits() -> tuple[list, list, list]:
    return load_spam_splits()


def test_the_collection_has_its_documented_counts():
    messages = read_spam_collection()
    labels = [label for _, label in messages]
    # The collection's own description (UCI): 5,574 messages, 4,827 ham, 747 spam.
    assert (len(messages), labels.count(0), labels.count(1)) == (5574, 4827, 747)
    assert all(text for text, _ in messages)


def test_splits_are_balanced_disjoint_and_seeded(splits):
    train, val, test = splits
    # 653 distinct spam texts + 653 sampled distinct ham = 1,306; int(0.7 * 1306) =
    # 914, int(0.1 * 1306) = 130, and the other 262 are the test split.
    assert (len(train), len(val), len(test)) == (914, 130, 262)
    everything = train + val + test
    assert sum(label for _, label in everything) == 653  # every distinct spam text
    assert len({text for text, _ in everything}) == len(everything) == 2 * 653
    ham = {text for text, label in read_spam_collection() if label == 0}
    assert {text for text, label in everything if label == 0} <= ham
    assert load_spam_splits(seed=123) == splits
    other = load_spam_splits(seed=7)
    assert other != splits and sorted(sum(other, [])) != sorted(everything)


def test_repeated_texts_stay_in_one_split_unless_asked():
    train, val, test = load_spam_splits(distinct=False)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # 747 + 747 messages
    seen = {text for text, _ in train + val}
    assert sum(text in seen for text, _ in test) > 0  # the original book's leak
    assert distinct_texts([("a", 1), ("b", 0), ("a", 1)]) == [("a", 1), ("b", 0)]
    with pytest.raises(ValueError, match="example 2 repeats an earlier text"):
        distinct_texts([("a", 1), ("b", 0), ("a", 0)])


def test_dataset_pads_on_the_right_and_counts_cuts():
    data = ClassificationDataset(["Hi there", "Win a prize now", "ok"], [0, 1, 0])
    assert data.max_length == 4 and data.num_truncated == 0
    ids, label = data[2]
    assert ids.tolist() == [482, PAD, PAD, PAD] and label.item() == 0
    short = ClassificationDataset(["Win a prize now", "ok"], [1, 0], max_length=2)
    assert short.inputs.shape == (2, 2) and short.num_truncated == 1
    assert short[0][0].tolist() == [16643, 257]  # the first two tokens


def test_special_token_text_is_not_padding():
    data = ClassificationDataset(["a <|endoftext|> b"], [1])
    assert PAD not in data.inputs.tolist()[0]


@pytest.mark.parametrize(
    "texts, labels, kwargs, message",
    [
        (["fine", "  "], [0, 1], {}, "text 1 is empty"),
        (["fine", "also"], [0, 2], {}, r"text 1 has label 2, outside range\(2\)"),
        (["fine"], [-1], {}, "outside range"),
        (["a", "b", "c"], [0, 1, 2], {"num_classes": 2}, "outside range"),
        (["fine"], [0, 1], {}, "1 texts but 2 labels"),
        (["fine"], [0], {"max_length": 0}, "max_length must be a positive integer"),
    ],
)
def test_dataset_refuses_bad_input(texts, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationDataset(texts, labels, **kwargs)


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        ([0.7], {}, "labels must be integers"),  # int() would make it 0
        (["1"], {}, "labels must be integers"),
        ([0], {"max_length": 4.5}, "max_length must be a positive integer, got 4.5"),
    ],
)
def test_dataset_refuses_values_of_the_wrong_type(labels, kwargs, message):
    with pytest.raises(TypeError, match=message):
        ClassificationDataset(["fine"], labels, **kwargs)


def test_loaders_pad_every_split_like_training(splits: tuple[list, list, list]):
    train, val, test = create_classification_loaders(*splits, batch_size=8)
    width = train.dataset.max_length
    assert val.dataset.max_length == test.dataset.max_length == width
    assert len(train) == 914 // 8 and len(test.dataset) == 262  # the sizes above
    first = [labels.tolist() for _, labels in itertools.islice(train, 3)]
    again = create_classification_loaders(*splits, batch_size=8)[0]
    assert first == [labels.tolist() for _, labels in itertools.islice(again, 3)]
    with pytest.raises(ValueError, match="at least one"):
        create_classification_loaders(splits[0], [], splits[2])


@pytest.mark.parametrize("blocks", [0, 1, 2])
def test_head_shape_and_exactly_the_right_parameters_trainable(blocks):
    model = classifier(num_classes=3, trainable_blocks=blocks)
    assert isinstance(model.out_head, torch.nn.Linear)
    assert model.out_head.weight.shape == (3, CFG.emb_dim)
    assert model.out_head.bias.shape == (3,)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 3)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {
        "out_head.weight",
        "out_head.bias",
        "final_norm.scale",
        "final_norm.shift",
    }
    for layer in range(CFG.n_layers - blocks, CFG.n_layers):
        expected |= {
            f"trf_blocks.{layer}.{name}"
            for name, _ in model.trf_blocks[layer].named_parameters()
        }
    assert trainable == expected
    assert model.tok_emb.weight.requires_grad is False


def test_the_head_unties_the_embedding():
    model = classifier(cfg=dataclasses.replace(CFG, tie_weights=True))
    assert model.out_head.weight is not model.tok_emb.weight
    assert model.tok_emb.weight.shape == (CFG.vocab_size, CFG.emb_dim)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes >= 2"),
        ({"trainable_blocks": -1}, "between 0 and the model's 2 blocks, got -1"),
        ({"trainable_blocks": 3}, "got 3"),
    ],
)
def test_head_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        add_classification_head(GPTModel(CFG), **kwargs)


def test_padding_never_changes_the_last_real_tokens_output():
    model = classifier().eval()
    torch.manual_seed(1)
    lengths = [3, 7, 12, 1]
    rows = [torch.randint(0, 50000, (n,)) for n in lengths]
    padded = torch.full((4, 20), PAD)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    with torch.no_grad():
        batch = torch.softmax(classification_logits(model, padded), -1)
        alone = torch.cat(
            [torch.softmax(classification_logits(model, row[None]), -1) for row in rows]
        )
        final = torch.softmax(model(padded)[:, -1], -1)
    torch.testing.assert_close(batch, alone, atol=1e-6, rtol=0)
    assert (final - alone).abs().max() > 1e-3  # the final position reads padding
    first = classification_logits(model, padded, token="first")
    torch.testing.assert_close(first, model(padded)[:, 0])


def test_the_model_runs_only_on_the_columns_some_row_reads():
    model = classifier().eval()
    widths = []
    model.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    padded = torch.full((3, 20), PAD)
    padded[0, :4], padded[1, :9], padded[2, :2] = 11, 12, 13
    with torch.no_grad():
        trimmed = classification_logits(model, padded)
        classification_logits(model, padded, token="first")
        whole = model(padded)[torch.arange(3), torch.tensor([3, 8, 1])]
    assert widths == [9, 1, 20]  # the longest row, then one column for "first"
    torch.testing.assert_close(trimmed, whole, atol=1e-6, rtol=0)


def test_logits_refuse_rows_of_padding_and_unknown_tokens():
    model = classifier()
    with pytest.raises(ValueError, match="nothing but padding"):
        classification_logits(model, torch.tensor([[5, PAD], [PAD, PAD]]))
    with pytest.raises(ValueError, match="'last' or 'first'"):
        classification_logits(model, torch.tensor([[5]]), token="middle")


def test_loss_is_cross_entropy_at_the_last_real_token():
    model = classifier().eval()  # no dropout
    inputs = torch.tensor([[5, 6, 7, PAD], [8, 9, PAD, PAD]])
    labels = torch.tensor([1, 0])
    loss = calc_classification_loss(inputs, labels, model, "cpu")
    logits = model(inputs)
    by_hand = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 2], logits[1, 1]]), labels
    )
    torch.testing.assert_close(loss, by_hand)
    with pytest.raises(ValueError, match=r"labels must be in range\(2\)"):
        calc_classification_loss(inputs, torch.tensor([1, 2]), model, "cpu")
    with pytest.raises(ValueError, match="exceed the model's context of 32"):
        calc_classification_loss(
            torch.ones(1, 33, dtype=torch.long), torch.tensor([0]), model, "cpu"
        )


def test_accuracy_counts_right_answers_and_restores_the_mode():
    model = classifier().train()
    data = ClassificationDataset(
        ["one", "two words", "three more words"] * 3, [0, 1, 1] * 3
    )
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    with torch.no_grad():
        model.eval()
        predicted = classification_logits(model, data.inputs).argmax(-1)
        model.train()
    expected = (predicted == data.labels).float().mean().item()
    assert calc_accuracy_loader(loader, model, "cpu") == pytest.approx(expected)
    first = (predicted[:4] == data.labels[:4]).float().mean().item()
    assert calc_accuracy_loader(loader, model, "cpu", 1) == pytest.approx(first)
    assert model.training
    with pytest.raises(ValueError, match="no batches"):
        calc_accuracy_loader([], model, "cpu")


def test_train_model_learns_a_toy_task_through_loss_fn():
    texts = [
        "free prize call now",
        "win cash txt now",
        "see you at home",
        "ok see you later",
    ] * 8
    labels = [1, 1, 0, 0] * 8
    loaders = create_classification_loaders(
        list(zip(texts, labels, strict=True)),
        [("win a prize", 1)],
        [("home", 0)],
        batch_size=4,
    )
    model = classifier(trainable_blocks=2)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=3e-3
    )
    before = calc_accuracy_loader(loaders[0], model, "cpu")
    loss_before = calc_loss_loader(
        loaders[0], model, "cpu", loss_fn=calc_classification_loss
    )
    history = train_model(
        model,
        loaders[0],
        loaders[1],
        optimizer,
        "cpu",
        TrainingConfig(num_epochs=6, eval_freq=4, progress=False),
        sample=lambda m: calc_accuracy_loader(loaders[0], m, "cpu"),
        loss_fn=calc_classification_loss,
    )
    assert history.train_losses[-1] < loss_before - 0.3
    assert history.samples[-1] == 1.0 > before
    assert len(history.samples) == 6


def test_classify_answers_and_refuses_bad_messages():
    model = classifier().train()
    label, probability = classify("Win a free prize", model)
    assert label in (0, 1) and 0.5 <= probability <= 1.0
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="empty"):
        classify("  ", model)
    too_long = "the message has 40 tokens, more than max_length=32; pass truncate"
    with pytest.raises(ValueError, match=too_long):
        classify("hi " * 39 + "hi", model)
    with pytest.raises(ValueError, match="more than max_length=5"):
        classify("hi " * 6, model, max_length=5)
    with pytest.raises(ValueError, match="between 1 and the model's context of 32"):
        classify("hi", model, max_length=33)
    cut = classify("hi " * 39 + "hi", model, truncate=True)
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([[5303] + [23105] * 31])  # "hi" and " hi" x 31
        expected = torch.softmax(classification_logits(model, ids), -1)[0]
    assert cut[0] == expected.argmax().item()
    assert cut[1] == pytest.approx(expected.max().item())


def test_save_and_load_a_classifier(tmp_path):
    model = classifier(num_classes=3, cfg=dataclasses.replace(CFG, tie_weights=True))
    model.eval()
    save_classifier(model, tmp_path / "c.safetensors")
    loaded = load_classifier(tmp_path / "c.safetensors")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert loaded.out_head.out_features == 3 and not loaded.training
    with pytest.raises(
        ValueError,
        match="holds a classifier with 3 classes: load it "
        "with llmbook.classify.load_classifier",
    ):
        load_model(tmp_path / "c.safetensors")
    save_model(GPTModel(CFG), tmp_path / "lm.safetensors")
    with pytest.raises(ValueError, match="holds no classifier"):
        load_classifier(tmp_path / "lm.safetensors")


def test_labelled_texts_come_from_tsv_or_csv(tmp_path):
    sms = read_labelled_texts(data_file("SMSSpamCollection"))
    assert len(sms) == 5574 and {label for _, label in sms} == {"ham", "spam"}
    more = "pos\tFine\nneg\tAwful\n"  # two texts a label, as a classifier needs
    (tmp_path / "a.tsv").write_bytes(
        b"pos\tGood, very good\r\n\nneg\tBad\r\n" + more.encode()
    )
    (tmp_path / "a.csv").write_text(
        'label,text\npos,"Good, very good"\nneg,Bad\n' + more.replace("\t", ",")
    )
    expected = [
        ("Good, very good", "pos"),
        ("Bad", "neg"),
        ("Fine", "pos"),
        ("Awful", "neg"),
    ]
    assert read_labelled_texts(tmp_path / "a.tsv") == expected
    assert read_labelled_texts(tmp_path / "a.csv") == expected
    # Spreadsheet habits that are fine: a header in any case and order (a TSV's
    # too), a byte-order mark, more columns than the two, quoted newlines.
    for name, text in [
        ("h.tsv", "Label\tText\npos\tGood, very good\nneg\tBad\n" + more),
        (
            "h.csv",
            '\ufeffId,TEXT,Class\n1,"Good, very good",pos\n2,Bad,neg\n'
            "3,Fine,pos\n4,Awful,neg\n",
        ),
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert read_labelled_texts(tmp_path / name) == expected, name
    (tmp_path / "n.csv").write_text("text,label\n" + '"two\nlines",pos\nBad,neg\n' * 2)
    assert read_labelled_texts(tmp_path / "n.csv")[0] == ("two\nlines", "pos")
    # Issue 34: what was read wrongly without a word is now refused, naming the line.
    rows = "".join(f"{i}\tspam\tWin {i}\n" for i in range(12))
    for name, content, message in [
        ("b.tsv", b"pos\tfine\nno tab here\n", "b.tsv:2: no tab after the label"),
        ("c.csv", b"text\nfine\n", "c.csv:1: a CSV file needs a first row that names"),
        ("d.csv", b"text,label\nfine,pos\nshort\n", "d.csv:3: 1 columns, not 2"),
        ("e.tsv", "pos\tcaf\xe9\n".encode("latin-1"), "not a UTF-8 text file"),
        ("f.tsv", b"pos\tone\npos\ttwo\n", "two labels or more"),
        (
            "g.tsv",
            b"pos\tone\nPos\ttwo\n",
            r"g.tsv:2: the label 'Pos' is 'pos' \(line 1\) written another",
        ),
        (
            "p.tsv",
            b"1\tone\n1.0\ttwo\n0\tx\n0\ty\n",
            r"p.tsv:2: the label '1.0' is '1' \(line 1\) written",
        ),
        ("i.tsv", b"pos\tone\n\ttwo\n", "i.tsv:2: no label"),
        ("j.csv", b"text,label\n,pos\n", "j.csv:2: no text"),
        ("k.tsv", rows.encode(), "k.tsv:1: 3 columns, not 2"),
        ("l.tsv", "".join(f"{i}\tWin {i}\n" for i in range(12)).encode(), "12 labels"),
        ("m.tsv", b"\n\n", "holds no texts"),
        (
            "q.csv",
            b'text,label\nfine,pos\n"open' + b"x" * 140_000,
            "q.csv:3: a text of",
        ),
        (
            "o.tsv",
            b"type\tsms\nham\tHi\nham\tOk\nspam\tWin\nspam\tCall",
            "o.tsv:1: the",
        ),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_labelled_texts(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_labelled_texts(tmp_path / "missing.tsv")
