"""The one error type that the CLI turns into exit status 2."""


class UserError(ValueError):
    """Bad input from a user: names the bad field (or file) and says what is wrong."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = " ".join(message.split())  # one line, whatever a library's text says (torchvision's has several)
        super().__init__(f"{field}: {self.message}")
