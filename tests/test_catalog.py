"""The catalog: what is read, in which order, with which labels (no decoding here)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _images import encode, flat_rgb, write

from fastfeat.catalog import IMAGE_EXTENSIONS, Catalog, build_catalog
from fastfeat.decode import DecodeError, load_image

PNG = encode(flat_rgb(4, 5, 1), "PNG")


def _touch(root, *rels, data=PNG):
    for rel in rels:
        write(os.path.join(root, rel), data)


def _inside(root, path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


# -- class folders -----------------------------------------------------------------------------

KERAS_TREE = [
    "b/z.png", "b/a.jpg", "b/A.PNG", "b/sub/m.png", "b/sub b/n.png", "b/sub-b/o.png", "b/sub/deeper/p.bmp",
    "a/x.jpeg", "a/y.tif", "a/y.tiff", "a/x.ppm", "Z/q.png", "a b/r.png", "a_b/s.png",
    "b/ignored.txt", "b/ignored.jpgx", "b/.hidden.png", "top.png",
]  # fmt: skip


@pytest.mark.filterwarnings('ignore:Using "\\.tiff" files:UserWarning')
def test_class_folders_match_flow_from_directory(tmp_path):
    """Same files, same order, same labels and class order as Keras' DirectoryIterator."""
    import tensorflow as tf

    root = tmp_path / "data"
    for rel in reversed(KERAS_TREE):  # creation order must not matter
        _touch(root, rel)
    os.makedirs(root / "empty_class")
    catalog = build_catalog(root)

    it = tf.keras.preprocessing.image.ImageDataGenerator().flow_from_directory(str(root), shuffle=False)
    assert catalog.class_names == sorted(it.class_indices, key=it.class_indices.get)
    assert catalog.class_names == ["Z", "a", "a b", "a_b", "b", "empty_class"]
    assert catalog.paths == it.filenames
    np.testing.assert_array_equal(catalog.labels, it.classes)
    assert catalog.labels.dtype == np.int64
    assert "b/sub/deeper/p.bmp" in catalog.paths and "top.png" not in catalog.paths
    assert catalog.root == str(root) and not any(os.path.isabs(p) for p in catalog.paths)
    assert catalog.counts()["empty_class"] == 0 and catalog.counts()["b"] == 8
    assert catalog.abspath(0) == os.path.join(str(root), catalog.paths[0])


def test_classes_argument_matches_flow_from_directory(tmp_path):
    import tensorflow as tf

    root = tmp_path / "data"
    _touch(root, "a/1.png", "a/sub/2.png", "b/3.png", "c/4.png", "c/5.png")
    classes = ["c", "a"]
    catalog = build_catalog(root, classes=classes)
    gen = tf.keras.preprocessing.image.ImageDataGenerator()
    it = gen.flow_from_directory(str(root), classes=classes, shuffle=False)
    assert catalog.paths == it.filenames and catalog.class_names == classes
    np.testing.assert_array_equal(catalog.labels, it.classes)


def test_order_is_deterministic(tmp_path):
    root = tmp_path / "data"
    names = [f"c{i % 3}/d{i % 2}/img_{(i * 7) % 11}.png" for i in range(11)]
    _touch(root, *names)
    first = build_catalog(root)
    second = build_catalog(str(root) + os.sep)
    assert first.paths == second.paths and first.class_names == second.class_names
    assert first.paths == sorted(first.paths, key=lambda p: (p.split("/")[0], os.path.dirname(p), p))


@pytest.mark.parametrize("classes", [["b", "a"], "b,a", ("b", "a")])
def test_classes_fix_the_order_and_the_selection(tmp_path, classes):
    root = tmp_path / "data"
    _touch(root, "a/1.png", "b/2.png", "b/3.png", "c/4.png")
    catalog = build_catalog(root, classes=classes)
    assert catalog.class_names == ["b", "a"]
    assert catalog.paths == ["b/2.png", "b/3.png", "a/1.png"]
    np.testing.assert_array_equal(catalog.labels, [0, 0, 1])


def test_unknown_or_repeated_class_is_an_error(tmp_path):
    root = tmp_path / "data"
    _touch(root, "a/1.png", "b/2.png")
    with pytest.raises(ValueError, match=r"\['nope'\].*Available: \['a', 'b'\].*Received: classes="):
        build_catalog(root, classes=["a", "nope"])
    with pytest.raises(ValueError, match="repeats"):
        build_catalog(root, classes=["a", "a"])


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS) + (".Jpg",))
def test_every_extension_is_found_case_insensitively(tmp_path, ext):
    root = tmp_path / "data"
    _touch(root, f"k/img{ext}", "k/notes.txt", "k/img.jpg.bak", "k/archive.zip")
    assert build_catalog(root).paths == [f"k/img{ext}"]


def test_extensions_argument(tmp_path):
    root = tmp_path / "data"
    _touch(root, "k/a.png", "k/b.JPG", "k/c.gif")
    assert build_catalog(root, extensions=("jpg", ".GIF")).paths == ["k/b.JPG", "k/c.gif"]
    with pytest.raises(ValueError, match="Received: extensions=()"):
        build_catalog(root, extensions=())


# -- flat folders ------------------------------------------------------------------------------


def test_flat_folder_has_no_labels(tmp_path):
    root = tmp_path / "flat"
    _touch(root, "b.png", "a.JPG", "c.webp", "readme.md", "sub_without_images/x.txt")
    catalog = build_catalog(root)
    assert catalog.paths == ["a.JPG", "b.png", "c.webp"]
    assert catalog.class_names == [] and not catalog.labeled
    np.testing.assert_array_equal(catalog.labels, [-1, -1, -1])


# -- file lists --------------------------------------------------------------------------------


def test_txt_list(tmp_path):
    _touch(tmp_path, "imgs/a.png", "imgs/b.png", "other/c.png")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# a comment\nimgs/b.png\n\n  imgs/./a.png  \n{tmp_path / 'other/c.png'}\n")
    catalog = build_catalog(lst)
    assert catalog.root == str(tmp_path)
    assert catalog.paths == ["imgs/b.png", "imgs/a.png", "other/c.png"]
    assert not catalog.labeled and (catalog.labels == -1).all()
    assert all(os.path.exists(catalog.abspath(i)) for i in range(len(catalog)))


def test_csv_list_with_labels(tmp_path):
    _touch(tmp_path, "x/1.png", "x/2.png", "x/3.png")
    lst = tmp_path / "list.csv"
    lst.write_text("\ufeffPath,Label,extra\nx/1.png,dog,0\nx/2.png,cat,1\nx/3.png,dog,2\n", encoding="utf-8")
    catalog = build_catalog(lst)
    assert catalog.paths == ["x/1.png", "x/2.png", "x/3.png"]
    assert catalog.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(catalog.labels, [1, 0, 1])
    fixed = build_catalog(lst, classes=["dog", "cat", "eel"])
    np.testing.assert_array_equal(fixed.labels, [0, 1, 0])
    with pytest.raises(ValueError, match=r"labels not in `classes`: \['cat'\]"):
        build_catalog(lst, classes=["dog"])


def test_csv_list_without_labels_and_bad_header(tmp_path):
    lst = tmp_path / "list.csv"
    lst.write_text("path\na.png\n\nb.png\n")
    catalog = build_catalog(lst)
    assert catalog.paths == ["a.png", "b.png"] and not catalog.labeled
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,x\n")
    with pytest.raises(ValueError, match=r"'path' column.*Received: columns=\['file', 'label'\]"):
        build_catalog(bad)


def test_list_with_non_utf8_name(tmp_path):
    name = b"caf\xe9.png"
    write(os.path.join(os.fsencode(tmp_path), name), PNG)
    lst = tmp_path / "list.txt"
    lst.write_bytes(name + b"\n")
    catalog = build_catalog(lst)
    assert catalog.paths == [os.fsdecode(name)]
    assert load_image(catalog.abspath(0), None).shape == (4, 5, 3)


# -- errors ------------------------------------------------------------------------------------


def test_empty_folder_and_no_match_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"No images found .*Received: source="):
        build_catalog(empty)
    _touch(tmp_path / "nomatch", "a/readme.txt", "b/c/notes.md", "x.doc")
    with pytest.raises(ValueError, match="No images found"):
        build_catalog(tmp_path / "nomatch")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="No images found"):
        build_catalog(tmp_path / "empty.txt")


def test_missing_source_and_wrong_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: source="):
        build_catalog(tmp_path / "nope")
    _touch(tmp_path, "one.png")
    with pytest.raises(ValueError, match=r"directory or a \.txt/\.csv file list\. Received: source="):
        build_catalog(tmp_path / "one.png")


# -- links -------------------------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path):
    """root/{cls, cls/inner_link -> ../other, cls/out.png -> outside, linked_cls -> other, ...}."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _touch(root, "cls/real.png", "other/o.png")
    _touch(outside, "secret.png", "dir/s.png")
    os.symlink(outside / "secret.png", root / "cls" / "out.png")  # a file link escaping the root
    os.symlink(root / "other" / "o.png", root / "cls" / "in.png")  # a file link staying inside
    os.symlink(root / "other", root / "cls" / "inner_link")  # a directory link
    os.symlink(outside / "dir", root / "cls" / "outer_link")  # a directory link escaping the root
    os.symlink(root / "other", root / "linked_cls")  # a class folder that is a link
    os.symlink(root / "cls" / "missing.png", root / "cls" / "broken.png")  # broken, inside
    os.symlink(outside / "gone.png", root / "cls" / "broken_out.png")  # broken, outside
    os.symlink("loop_b.png", root / "cls" / "loop_a.png")  # a file link loop
    os.symlink("loop_a.png", root / "cls" / "loop_b.png")
    return root


def test_links_not_followed_by_default_and_nothing_escapes(linked):
    catalog = build_catalog(linked)
    assert catalog.class_names == ["cls", "other"]  # linked_cls is a link: not a class
    assert catalog.paths == [
        "cls/broken.png", "cls/in.png", "cls/loop_a.png", "cls/loop_b.png", "cls/real.png", "other/o.png",
    ]  # fmt: skip
    for rel in catalog.paths:
        assert _inside(linked, os.path.join(linked, rel)), rel
    # broken links and link loops are kept: reading them fails with a reason, never hangs or crashes
    for rel, reason in [("cls/broken.png", "No such file"), ("cls/loop_a.png", "symbolic links")]:
        with pytest.raises(DecodeError, match=reason) as info:
            load_image(catalog.abspath(catalog.paths.index(rel)), (8, 8))
        assert info.value.path.endswith(rel)


def test_follow_links_enters_linked_folders(linked):
    catalog = build_catalog(linked, follow_links=True)
    assert catalog.class_names == ["cls", "linked_cls", "other"]
    assert "cls/inner_link/o.png" in catalog.paths and "cls/outer_link/s.png" in catalog.paths
    assert "cls/out.png" in catalog.paths and "linked_cls/o.png" in catalog.paths


def test_directory_link_loop_terminates(tmp_path):
    root = tmp_path / "root"
    _touch(root, "cls/a.png", "cls/sub/b.png")
    os.symlink(root / "cls", root / "cls" / "sub" / "up")  # cls/sub/up -> cls: a loop
    os.symlink(root / "cls" / "sub", root / "cls" / "sub" / "self")  # sub/self -> sub
    assert build_catalog(root).paths == ["cls/a.png", "cls/sub/b.png"]
    followed = build_catalog(root, follow_links=True)
    assert followed.paths == ["cls/a.png", "cls/sub/b.png"]  # links back to an ancestor are not entered
    os.symlink(root / "cls" / "sub", root / "cls" / "twin")  # not a loop: entered, as Keras does
    assert build_catalog(root, follow_links=True).paths == ["cls/a.png", "cls/sub/b.png", "cls/twin/b.png"]


def test_root_given_through_a_link(tmp_path):
    _touch(tmp_path / "real", "k/a.png")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    catalog = build_catalog(tmp_path / "alias")
    assert catalog.paths == ["k/a.png"] and catalog.root == str(tmp_path / "alias")


# -- names -------------------------------------------------------------------------------------


def test_non_utf8_names_in_folders(tmp_path):
    root = os.path.join(os.fsencode(tmp_path), b"data")
    write(os.path.join(root, b"caf\xe9", b"na\xefve.png"), PNG)
    write(os.path.join(root, b"plain", b"\xff\xfe.jpg"), encode(flat_rgb(3, 3, 2), "JPEG"))
    catalog = build_catalog(os.fsdecode(root))
    assert catalog.class_names == [os.fsdecode(b"caf\xe9"), "plain"]
    assert [os.fsencode(p) for p in catalog.paths] == [b"caf\xe9/na\xefve.png", b"plain/\xff\xfe.jpg"]
    for i in range(len(catalog)):
        assert load_image(catalog.abspath(i), (2, 2)).shape == (2, 2, 3)
    assert build_catalog(root).paths == catalog.paths  # a bytes source works too


def test_fingerprint_is_of_paths_labels_and_order(class_tree):
    import hashlib

    from fastfeat.catalog import build_catalog

    root, _ = class_tree
    cat = build_catalog(root)
    digest = hashlib.sha256()  # the recipe stores written before recorded as catalog_sha256
    for p in cat.paths:
        digest.update(os.fsencode(p) + b"\0")
    digest.update(cat.labels.astype(np.int64).tobytes())
    assert cat.fingerprint() == digest.hexdigest() == build_catalog(root).fingerprint()
    swapped = Catalog(cat.root, cat.paths[::-1], cat.labels[::-1], cat.class_names)
    relabeled = Catalog(cat.root, cat.paths, np.roll(cat.labels, 1), cat.class_names)
    assert len({cat.fingerprint(), swapped.fingerprint(), relabeled.fingerprint()}) == 3


@pytest.mark.parametrize("size, parts", [(9, 1), (9, 2), (9, 4), (9, 9), (3, 5), (0, 2)])
def test_part_bounds_are_contiguous_and_cover_in_order(size, parts):
    from fastfeat.catalog import part_bounds

    bounds = part_bounds(size, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [b - a for a, b in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    assert [len(x) for x in np.array_split(np.arange(size), parts)] == lengths


def test_catalog_parts_are_catalogs_of_their_own(class_tree):
    from fastfeat.catalog import build_catalog

    root, expected = class_tree
    cat = build_catalog(root)
    parts = [cat.part(k, 4) for k in range(4)]
    assert sum((p.paths for p in parts), []) == expected
    assert np.array_equal(np.concatenate([p.labels for p in parts]), cat.labels)
    assert all(p.root == cat.root and p.class_names == cat.class_names for p in parts)
    assert len({p.fingerprint() for p in parts}) == 4 and parts[1].fingerprint() == cat.part(1, 4).fingerprint()
    with pytest.raises(ValueError, match="Received: k=4, parts=4"):
        cat.part(4, 4)
    with pytest.raises(ValueError, match="Received: parts=0"):
        cat.part_bounds(0)
