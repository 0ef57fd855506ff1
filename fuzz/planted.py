#!/usr/bin/env python3
"""Shows that each fuzz target catches a real bug (docs/fuzzing.md): plants one bug at a time in the code under test,
fuzzes that target from its seeds until it fails (at most MAX seconds, default 600), prints how long it took, and
restores the file. A plant that does not build, or a bug that is not caught, makes the script fail.
    python3 fuzz/planted.py [target...]"""
import os, re, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MAX = int(os.environ.get("MAX", "600"))

# target: (file, text to replace, planted text, the bug in words)
PLANTS = {
    "signal_message": ("crates/proto/src/message.rs", "s.len() > MAX_ID_LEN)", "s.len() > MAX_ID_LEN + 1)",
                       "an id one byte over the limit is accepted"),
    "ws_frames": ("crates/server/src/ws/frame.rs",
                  "        if buf.len() < used {\n            return Ok(Decoded::Incomplete);\n        }\n"
                  "        let payload = &mut buf[head.header_len..used];\n        unmask(payload, head.mask);\n",
                  "        let end = used.min(buf.len());\n        unmask(&mut buf[head.header_len.min(end)..end], head.mask);\n"
                  "        if buf.len() < used {\n            return Ok(Decoded::Incomplete);\n        }\n"
                  "        let payload = &mut buf[head.header_len..used];\n",
                  "a frame is unmasked before it is complete, so a frame split across reads is unmasked twice"),
    "http_head": ("crates/server/src/ws/handshake.rs", "Ok(httparse::Status::Complete(len)) => len,",
                  "Ok(httparse::Status::Complete(len)) => len + usize::from(buf.len() > len),",
                  "the head length is off by one when frames follow the head"),
    "stun_message": ("crates/turn/src/stun/message.rs",
                     "            if next > raw.len() {\n                return Err(ParseError::BadAttribute);\n            }\n",
                     "", "an attribute longer than the message is not refused"),
    "turn_engine": ("crates/turn/src/policy.rs", "            if !embedded.is_empty() {", "            if false {",
                    "IPv6 addresses that embed IPv4 (::ffff:127.0.0.1, 6to4, NAT64) are not decided as the embedded one"),
    "auth_token": ("crates/server/src/auth.rs", "        validation.leeway = 0;\n",
                   "        validation.leeway = 0;\n        validation.insecure_disable_signature_validation();\n",
                   "token signatures are not checked"),
}

def main(targets):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    failed = False
    for target in targets or PLANTS:
        path, old, new, bug = PLANTS[target]
        full = os.path.join(ROOT, path)
        original = open(full).read()
        assert original.count(old) == 1, f"{path}: the text to replace is not there exactly once"
        try:
            open(full, "w").write(original.replace(old, new))
            build = subprocess.run(["cargo", "fuzz", "build", target], cwd=HERE, env=env, capture_output=True, text=True)
            if build.returncode != 0:
                print(f"{target}: the planted bug does not build:\n{build.stderr[-2000:]}")
                failed = True
                continue
            with tempfile.TemporaryDirectory() as work:
                start = time.time()
                run = subprocess.run(["cargo", "fuzz", "run", target, work, f"seeds/{target}", "--",
                                      f"-max_total_time={MAX}", f"-artifact_prefix={work}/"],
                                     cwd=HERE, env=env, capture_output=True, text=True)
                took = time.time() - start
            out = run.stdout + run.stderr
            runs = re.findall(r"^#(\d+)", out, re.M)
            why = re.search(r"(panicked at .*\n.*|ERROR: AddressSanitizer.*)", out)
            if run.returncode != 0 and why:
                print(f"{target}: caught after {took:.0f} s, {runs[-1] if runs else '?'} inputs ({bug}): "
                      f"{' '.join(why.group(1).split())[:200]}")
            else:
                print(f"{target}: NOT caught in {MAX} s ({bug})")
                failed = True
        finally:
            open(full, "w").write(original)
    sys.exit(1 if failed else 0)

if __name__ == "__main__":
    main(sys.argv[1:])
