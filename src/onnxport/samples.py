"""Real-looking sample text: résumé lines, the first customer's domain.

Validation and calibration run on tokenized text like this rather than on random token ids,
because random ids are not what a model sees in production and hide attention-mask bugs.
"""

from __future__ import annotations

RESUME_LINES: tuple[str, ...] = (
    "Jane Doe, Senior Data Engineer at Contoso Ltd, Seattle, WA.",
    "Email: jane.doe@example.com | Phone: +1 (206) 555-0142",
    "Skills: Python, PyTorch, ONNX Runtime, Kubernetes, Apache Spark, SQL.",
    "2019 - 2024: Led the migration of 40 batch pipelines to streaming at Fabrikam Inc.",
    "Education: M.Sc. Computer Science, University of Washington, 2017.",
    "Carlos Ramírez, machine learning engineer, Madrid, Spain.",
    "Built a named-entity recognition service handling 2 million documents per day.",
    "Languages: English (fluent), Spanish (native), German (B2).",
    "Certifications: Azure AI Engineer Associate (2023), AWS Solutions Architect.",
    "Contact Priya Natarajan at priya.n@example.org or 555-0199 for references.",
    "Reduced model latency by 63% by exporting transformer models to ONNX.",
    "Worked with Northwind Traders from March 2016 to June 2019 as a backend developer.",
    "Interests: open source, distributed systems, trail running, chess.",
    "Mentored five junior engineers and ran the weekly reading group on NLP papers.",
)


def sample_texts(count: int, *, min_lines: int = 1, offset: int = 0) -> list[str]:
    """`count` texts, each joining `min_lines` consecutive résumé lines (cycling)."""
    texts = []
    n = len(RESUME_LINES)
    for i in range(count):
        start = (offset + i * min_lines) % n
        lines = [RESUME_LINES[(start + j) % n] for j in range(min_lines)]
        texts.append(" ".join(lines))
    return texts
