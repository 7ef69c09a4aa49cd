from tests.vero_events import vero_examples


def test_an_example_event_is_accepted_and_spooled(listener):
    response = listener.post(vero_examples()[0])
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    lines = (listener.data_dir / "spool" / "00000000000000000001.jsonl").read_bytes().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(b'{"seq":1,')
