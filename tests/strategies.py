"""Hypothesis strategies the property-based tests of both sides share."""

from hypothesis import strategies as st

# FHIR date search values, well-formed and not: prefixes, 1-5 digit years, any digit counts,
# fractions and offsets (R4 search.html#date).
DATE_TEXT = st.from_regex(
    r"(eq|gt|ge|lt|le|ne|sa|eb|ap)?[0-9]{1,5}(-[0-9]{1,2}(-[0-9]{1,2}(T[0-9]{1,2}:[0-9]{1,2}"
    r"(:[0-9]{1,2}(\.[0-9]{1,12})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?",
    fullmatch=True,
)


def value_bytes(*samples: bytes) -> st.SearchStrategy[bytes]:
    """Return query values as raw bytes (invalid UTF-8 and lone surrogates included)."""
    return st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(str.encode),
        DATE_TEXT.map(str.encode),
        st.sampled_from([b"a,b", b"http://x|AMB", b"\x00", b"\xed\xa0\x80", *samples]),
    )
