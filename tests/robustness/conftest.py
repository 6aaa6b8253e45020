from _fuzz import CASES_RUN


def pytest_terminal_summary(terminalreporter):
    if CASES_RUN["count"]:
        terminalreporter.write_line(
            f"robustness: {CASES_RUN['count']} generated cases, "
            f"{CASES_RUN['raised']} rejected with ValueError/TypeError"
        )
