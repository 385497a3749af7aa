"""transformers' own common tests over AVBERT's processing classes, in the manner of its per-model tests.

`VideoProcessingTestMixin` drives `AVBertVideoProcessor`, `SequenceFeatureExtractionTestMixin` drives
`AVBertFeatureExtractor` and `ProcessorTesterMixin` drives `AVBertProcessor`. Each skip states why the test does not
apply; docs/processing.md ("transformers common tests") lists them.
"""

import itertools
import random
import unittest

import numpy as np
from transformers_common import ProcessorTesterMixin, SequenceFeatureExtractionTestMixin, VideoProcessingTestMixin
from transformers_tests.test_video_processing_common import prepare_video_inputs

from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor

NUM_CLIPS = 2
NUM_FRAMES = 4

# The layout of the output: (batch, clips, channels, frames, H, W), the model's `pixel_values`. The common
# frame-count tests read the frame axis as axis 1 of a (batch, frames, channels, H, W) output.
CLIP_LAYOUT = (
    "AVBERT's pixel_values are (batch, clips, 3, frames, H, W) with clips sampled at target_fps / "
    "frame_sampling_rate; the test reads frames on axis 1 and samples at `fps`, which clip sampling refuses"
)


class AVBertVideoProcessingTester:
    def __init__(
        self,
        parent,
        batch_size=3,
        num_frames=8,
        num_channels=3,
        min_resolution=30,
        max_resolution=40,
        crop_size=18,
        shortest_edge=20,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.num_channels = num_channels
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        self.crop_size = crop_size
        self.shortest_edge = shortest_edge

    def prepare_video_processor_dict(self):
        return {
            "num_clips": NUM_CLIPS,
            "num_frames": NUM_FRAMES,
            "size": {"shortest_edge": self.shortest_edge},
            "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "image_mean": [0.45, 0.45, 0.45],
            "image_std": [0.225, 0.225, 0.225],
            "do_resize": True,
            "do_center_crop": True,
            "do_normalize": True,
        }

    def expected_output_video_shape(self, videos):
        return NUM_CLIPS, 3, NUM_FRAMES, self.crop_size, self.crop_size

    def prepare_video_inputs(self, equal_resolution=False, return_tensors="pil"):
        return prepare_video_inputs(
            batch_size=self.batch_size,
            num_frames=self.num_frames,
            num_channels=self.num_channels,
            min_resolution=self.min_resolution,
            max_resolution=self.max_resolution,
            equal_resolution=equal_resolution,
            return_tensors=return_tensors,
        )


class AVBertVideoProcessingTest(VideoProcessingTestMixin, unittest.TestCase):
    fast_video_processing_class = AVBertVideoProcessor
    input_name = "pixel_values"

    def setUp(self):
        super().setUp()
        self.video_processor_tester = AVBertVideoProcessingTester(self)

    @property
    def video_processor_dict(self):
        return self.video_processor_tester.prepare_video_processor_dict()

    @unittest.skip(reason=CLIP_LAYOUT)
    def test_call_sample_frames(self):
        pass


class AVBertFeatureExtractionTester:
    def __init__(self, parent, batch_size=7, min_seq_length=400, max_seq_length=2000, feature_size=16):
        self.parent = parent
        self.batch_size = batch_size
        self.min_seq_length = min_seq_length
        self.max_seq_length = max_seq_length
        self.seq_length_diff = (max_seq_length - min_seq_length) // (batch_size - 1)
        self.feature_size = feature_size
        self.padding_value = 0.0
        self.sampling_rate = 16000

    def prepare_feat_extract_dict(self):
        return {
            "feature_size": self.feature_size,
            "sampling_rate": self.sampling_rate,
            "padding_value": self.padding_value,
            "num_clips": 2,
            "clip_samples": 800,
            "num_time_frames": 16,
        }

    def prepare_inputs_for_common(self, equal_length=False, numpify=False):
        """(length, feature_size) sequences for the inherited `pad`, which the mixin exercises."""

        def _flatten(list_of_lists):
            return list(itertools.chain(*list_of_lists))

        if equal_length:
            lengths = [self.max_seq_length] * self.batch_size
        else:
            lengths = range(self.min_seq_length, self.max_seq_length, self.seq_length_diff)
        rng = random.Random(0)
        inputs = [[[rng.random() for _ in range(self.feature_size)] for _ in range(length)] for length in lengths]
        if numpify:
            inputs = [np.asarray(x) for x in inputs]
        return inputs


class AVBertFeatureExtractionTest(SequenceFeatureExtractionTestMixin, unittest.TestCase):
    feature_extraction_class = AVBertFeatureExtractor

    def setUp(self):
        self.feat_extract_tester = AVBertFeatureExtractionTester(self)


class AVBertProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = AVBertProcessor
    videos_input_name = "pixel_values"

    @classmethod
    def _setup_video_processor(cls):
        return AVBertVideoProcessor(
            num_clips=NUM_CLIPS,
            num_frames=NUM_FRAMES,
            size={"shortest_edge": 20},
            crop_size={"height": 18, "width": 18},
        )

    @classmethod
    def _setup_feature_extractor(cls):
        return AVBertFeatureExtractor(num_clips=NUM_CLIPS, feature_size=16, num_time_frames=16, clip_samples=4000)
