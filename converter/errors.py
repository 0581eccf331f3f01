"""The one exception type a user can trigger; the CLI turns it into a one-line error."""


class ConversionError(Exception):
    """Bad input or a failed check: the message is one line that says what is wrong and what to do."""

    exit_code = 2


class VerificationError(ConversionError):
    """The converted model does not compute what the TensorFlow reference computes."""

    exit_code = 3
