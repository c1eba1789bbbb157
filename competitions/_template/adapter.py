"""{{slug}}: TODO(1) one line: what is segmented, in which images.

Files in the data folder (`podium download competition={{slug}}`):
{{files}}
"""

from __future__ import annotations

import podium
from podium import Competition, Sample

# TODO(1): where the files are, relative to the data folder; {id} is an image id.
TRAIN_CSV = "{{train_csv}}"  # one row per training image: id and encoded mask, named as in
TRAIN_IMAGE = "{{train_image}}"  # the submission (else change id_col/mask_col below)
TEST_IMAGE = "{{test_image}}"


def group_of(image_id: str) -> str | None:
    """TODO(2): images that must share a fold (same patient, video, object) return the same
    key; None makes each image its own group."""
    return None


class CompetitionTemplate(Competition):
    def train_samples(self) -> list[Sample]:
        id_col, mask_col = self.submission.id_column, self.submission.mask_column
        return [
            Sample(
                id=row[id_col],
                image=self.data_dir / TRAIN_IMAGE.format(id=row[id_col]),
                mask=row[mask_col],  # encoded like the submission (order, base, empty token)
                group=group_of(row[id_col]),
                stratify=not self.submission.is_empty(row[mask_col]),
                origin=row.origin,  # problems with this label name its CSV row
            )
            for row in podium.read_csv_rows(self.data_dir / TRAIN_CSV, key=id_col)
        ]

    def test_samples(self) -> list[Sample]:
        id_col = self.submission.id_column
        return [
            Sample(
                id=row[id_col],
                image=self.data_dir / TEST_IMAGE.format(id=row[id_col]),
                origin=row.origin,
            )
            for row in podium.read_csv_rows(self.sample_submission_path(), key=id_col)
        ]
