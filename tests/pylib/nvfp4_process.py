"""Running the project's binaries from the Python suites (tests/python, tests/integration)."""
import subprocess


def run(*args, check=True, timeout=300):
    """Runs a command (arguments passed through str()), capturing its text output; with check,
    asserts exit status 0 and shows the output when it is not."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result
