"""A small live plot of the training loss and the validation score, drawn with QPainter (no plotting library).

Adding a point only stores two numbers and asks Qt for a repaint; Qt merges the repaints of a burst of steps into one.
"""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR, VALIDATION_COLOR = QColor("orange"), QColor("deepskyblue")
MARGIN = 4


class TrainingPlot(QWidget):
    """Loss per step (orange, scaled to its own range) and validation score per check (blue, on [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(80)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("orange: training loss (own scale); blue: validation score (0 to 1)")
        self.losses: list[tuple[int, float]] = []
        self.validations: list[tuple[int, float]] = []
        self.total = 1

    def clear(self) -> None:
        self.losses, self.validations = [], []
        self.update()

    def add(self, step: int, total: int, loss: float | None, validation: float | None) -> None:
        """Record one step's ``loss`` and/or ``validation`` (None: not measured at this step)."""
        self.total = max(total, step, 1)
        if loss is not None:
            self.losses.append((step, loss))
        if validation is not None:
            self.validations.append((step, validation))
        self.update()

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(0, 0, 0, 40))
        if self.losses:
            values = [v for _, v in self.losses]
            low, high = min(values), max(values)
            self._draw(painter, self.losses, low, high if high > low else low + 1, LOSS_COLOR)
        self._draw(painter, self.validations, 0.0, 1.0, VALIDATION_COLOR)
        painter.end()

    def _draw(self, painter: QPainter, points: list[tuple[int, float]], low: float, high: float, color: QColor):
        width, height = self.width() - 2 * MARGIN, self.height() - 2 * MARGIN
        polygon = QPolygonF(
            [
                QPointF(MARGIN + width * step / self.total, MARGIN + height * (1 - (value - low) / (high - low)))
                for step, value in points
            ]
        )
        painter.setPen(QPen(color, 1.5, Qt.PenStyle.SolidLine))
        painter.drawPolyline(polygon)
        if len(points) == 1:
            painter.drawEllipse(polygon[0], 2.0, 2.0)
