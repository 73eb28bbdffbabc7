"""Boxes (and masks) from instance labels, and the class mapping tables (vlt.data.instance_boxes)."""
import numpy as np
import pytest
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from vlt.data.instance_boxes import (
    BDD100K_DET_TO_THING,
    CITYSCAPES_LABEL_ID_TO_THING,
    CITYSCAPES_NAME_TO_LABEL_ID,
    SIM10K_TO_CAR,
    THING_CLASSES,
    category_from_name,
    cityscapes_polygons_to_instance_ids,
    instances_from_cityscapes_ids,
    instances_from_label_and_instance_maps,
    restrict_to_classes,
)


def test_mapping_tables_follow_cityscapes_labels():
    from cityscapesscripts.helpers.labels import labels

    evaluated_things = [lb for lb in labels if lb.hasInstances and not lb.ignoreInEval]
    assert [lb.name for lb in evaluated_things] == THING_CLASSES
    assert {lb.id: THING_CLASSES.index(lb.name) for lb in evaluated_things} == CITYSCAPES_LABEL_ID_TO_THING
    assert {lb.name: lb.id for lb in labels if lb.hasInstances} == CITYSCAPES_NAME_TO_LABEL_ID
    # BDD100K: both releases' names; classes outside the Cityscapes things are not mapped.
    assert category_from_name("Pedestrian", BDD100K_DET_TO_THING) == THING_CLASSES.index("person")
    assert category_from_name("motor", BDD100K_DET_TO_THING) == THING_CLASSES.index("motorcycle")
    assert category_from_name("bike", BDD100K_DET_TO_THING) == THING_CLASSES.index("bicycle")
    for dropped in ("traffic light", "traffic sign", "other vehicle", "other person", "trailer"):
        assert category_from_name(dropped, BDD100K_DET_TO_THING) is None
    assert category_from_name("car", SIM10K_TO_CAR) == 0 and category_from_name("motorbike", SIM10K_TO_CAR) is None


def _by_box(annotations):
    return {tuple(a["bbox"]): a for a in annotations}


def test_boxes_from_cityscapes_instance_ids():
    ids = np.zeros((20, 30), dtype=np.int32)
    ids[2:6, 3:9] = 26000          # car #0: rows 2..5, cols 3..8
    ids[10:18, 20:22] = 24001      # person #1
    ids[0:4, 25:30] = 26           # "car group" crowd region (no instance)
    ids[15:20, 0:5] = 29000        # caravan: instance class, not evaluated -> ignored
    ids[8, 8] = 7                  # road
    annotations = _by_box(instances_from_cityscapes_ids(ids, with_masks=True))
    assert set(annotations) == {(3.0, 2.0, 9.0, 6.0), (20.0, 10.0, 22.0, 18.0), (25.0, 0.0, 30.0, 4.0)}
    car = annotations[(3.0, 2.0, 9.0, 6.0)]
    person = annotations[(20.0, 10.0, 22.0, 18.0)]
    crowd = annotations[(25.0, 0.0, 30.0, 4.0)]
    assert (car["category_id"], car["iscrowd"]) == (THING_CLASSES.index("car"), 0)
    assert (person["category_id"], person["iscrowd"]) == (THING_CLASSES.index("person"), 0)
    assert (crowd["category_id"], crowd["iscrowd"]) == (THING_CLASSES.index("car"), 1)
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in annotations.values())
    np.testing.assert_array_equal(mask_util.decode(car["segmentation"]).astype(bool), ids == 26000)
    assert mask_util.area(person["segmentation"]) == 16


def test_two_instances_of_one_class_and_non_convex_shapes():
    ids = np.zeros((10, 10), dtype=np.int32)
    ids[1:3, 1:9] = 33000  # an L-shaped bicycle
    ids[1:9, 1:3] = 33000
    ids[5:7, 5:7] = 33001
    boxes = sorted(a["bbox"] for a in instances_from_cityscapes_ids(ids))
    assert boxes == [[1.0, 1.0, 9.0, 9.0], [5.0, 5.0, 7.0, 7.0]]
    assert instances_from_cityscapes_ids(ids, min_area=5)[0]["bbox"] == [1.0, 1.0, 9.0, 9.0]
    assert instances_from_cityscapes_ids(np.zeros((4, 4), dtype=np.int32)) == []


def test_label_and_instance_maps_synscapes_style():
    labels = np.full((8, 8), 7, dtype=np.uint8)
    instances = np.zeros((8, 8), dtype=np.int64)
    labels[0:4, 0:4], instances[0:4, 0:4] = 26, 70000   # a car with a large instance id
    labels[4:8, 4:8], instances[4:8, 4:8] = 28, 70001   # a bus
    labels[4:6, 0:2] = 24                               # person pixels without an instance -> crowd
    out = {a["category_id"]: a for a in instances_from_label_and_instance_maps(labels, instances,
                                                                                 CITYSCAPES_LABEL_ID_TO_THING)}
    assert out[THING_CLASSES.index("car")]["bbox"] == [0.0, 0.0, 4.0, 4.0]
    assert out[THING_CLASSES.index("bus")]["bbox"] == [4.0, 4.0, 8.0, 8.0]
    assert out[THING_CLASSES.index("person")]["iscrowd"] == 1
    with pytest.raises(ValueError, match="one shape"):
        instances_from_label_and_instance_maps(labels, instances[:4], CITYSCAPES_LABEL_ID_TO_THING)


def test_polygons_are_drawn_back_to_front_like_cityscapes():
    polygons = {
        "imgHeight": 12, "imgWidth": 16,
        "objects": [
            {"label": "car", "polygon": [[1, 1], [10, 1], [10, 8], [1, 8]]},
            {"label": "person", "polygon": [[6, 0], [12, 0], [12, 11], [6, 11]]},  # in front of the car's right part
            {"label": "cargroup", "polygon": [[13, 9], [15, 9], [15, 11], [13, 11]]},
            {"label": "road", "polygon": [[0, 10], [5, 10], [5, 11], [0, 11]]},
        ],
    }
    ids = cityscapes_polygons_to_instance_ids(polygons)
    assert ids.shape == (12, 16)
    assert ids[4, 2] == 26000 and ids[4, 8] == 24000 and ids[10, 14] == 26 and ids[10, 2] == 0
    boxes = {(a["category_id"], a["iscrowd"]): a["bbox"] for a in instances_from_cityscapes_ids(ids)}
    # PIL fills vertices inclusively: the car covers columns 1..5 (6..10 hidden by the person), rows 1..8.
    assert boxes[(THING_CLASSES.index("car"), 0)] == [1.0, 1.0, 6.0, 9.0]
    assert boxes[(THING_CLASSES.index("person"), 0)] == [6.0, 0.0, 13.0, 12.0]
    assert boxes[(THING_CLASSES.index("car"), 1)] == [13.0, 9.0, 16.0, 12.0]


def test_restrict_to_classes_renumbers():
    annotations = [{"category_id": 2, "bbox": [0, 0, 1, 1]}, {"category_id": 0, "bbox": [0, 0, 2, 2]}]
    assert restrict_to_classes(annotations, {2: 0}) == [{"category_id": 0, "bbox": [0, 0, 1, 1]}]
