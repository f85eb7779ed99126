from export.train_demo.corpus import load_corpus, stdlib_files


def test_split_is_by_file_disjoint_and_deterministic() -> None:
    a, b = load_corpus(), load_corpus()
    assert a.train_files == b.train_files and a.val_files == b.val_files
    assert not set(a.train_files) & set(a.val_files)
    assert len(a.val_files) >= 10 and len(a.train_files) > 10 * len(a.val_files)
    assert len(a.train_files) + len(a.val_files) <= len(stdlib_files())
    assert any("def " in text for text in a.val)
