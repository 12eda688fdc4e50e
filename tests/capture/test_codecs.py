"""capture.codecs against real captures, independent decoders and synthetic tones.

The *_sipp_fs corpus captures all carry the same FreeSWITCH announcement, so every codec's
decode can be compared with an independent reference of that speech: sox's µ-law decode
of the PCMU capture (8 kHz) and sox's decode of the 16 kHz L16 capture. Waveform codecs
must match the reference sample by sample (correlation); parametric ones (G.729, iLBC,
Opus, Speex) must match its short-time spectrum. Noise, silence, a wrong bit order or a
wrong frame mode fail both.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from scapy.all import IP, UDP, IPv6, rdpcap

from capture.codecs import (
    ALAW_TO_PCM16,
    ULAW_TO_PCM16,
    CodecSpec,
    audio_rate,
    codec_spec,
    is_decodable_audio,
    make_decoder,
    upsample_2x,
    wav_rate_for,
)
from capture.errors import ParseError, UnsupportedCodec

CORPUS = Path("/work/shared/corpus/pcap")
RTCP_TYPES = range(72, 77)  # RTCP packet types 200-204 seen through the RTP PT field


# --------------------------------------------------------------------------------------
# Capture reading (scapy) and signal measures
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


@functools.cache
def udp_datagrams(name: str) -> tuple[Datagram, ...]:
    """Every UDP datagram of a corpus capture, whatever the port."""
    out = []
    for packet in rdpcap(str(CORPUS / name)):
        if UDP not in packet:
            continue
        ip = packet[IP] if IP in packet else packet[IPv6]
        udp = packet[UDP]
        out.append(Datagram(ip.src, udp.sport, ip.dst, udp.dport, bytes(udp.payload)))
    return tuple(out)


def is_rtp_or_rtcp(data: bytes) -> bool:
    return len(data) >= 12 and data[0] >> 6 == 2


def parse_rtp(data: bytes) -> RtpPacket:
    """Minimal RFC 3550 parse: CSRCs, header extension and padding removed."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data) - (data[-1] if data[0] & 0x20 else 0)
    return RtpPacket(
        data[1] & 0x7F,
        int.from_bytes(data[2:4], "big"),
        int.from_bytes(data[4:8], "big"),
        int.from_bytes(data[8:12], "big"),
        data[offset:end],
    )


@functools.cache
def rtp_streams(name: str) -> tuple[tuple[RtpPacket, ...], ...]:
    """RTP packets grouped by SSRC, in capture order."""
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for datagram in udp_datagrams(name):
        data = datagram.payload
        if is_rtp_or_rtcp(data) and data[1] & 0x7F not in RTCP_TYPES:
            packet = parse_rtp(data)
            by_ssrc.setdefault(packet.ssrc, []).append(packet)
    return tuple(tuple(packets) for packets in by_ssrc.values())


def sox_decode(raw: bytes, *input_format: str) -> np.ndarray:
    """Decode raw audio with sox (an implementation independent of ours) to int16 mono."""
    result = subprocess.run(
        ["sox", *input_format, "-", "-t", "raw", "-e", "signed", "-b", "16", "-L", "-c", "1", "-"],
        input=raw,
        capture_output=True,
        check=True,
    )
    return np.frombuffer(result.stdout, dtype="<i2")


@functools.cache
def reference_8k() -> np.ndarray:
    """The announcement at 8 kHz: sox's decode of the PCMU call."""
    pcmu = rtp_streams("g711_pcmu_pcma_sipp_fs.pcap")[0]
    raw = b"".join(p.payload for p in pcmu)
    return sox_decode(raw, "-t", "ul", "-r", "8000", "-c", "1")


@functools.cache
def reference_16k() -> np.ndarray:
    """The announcement at 16 kHz: sox's decode of the L16/16000/2 call (big-endian PCM)."""
    l16 = rtp_streams("l16_4variants_sipp_fs.pcap")[1]
    raw = b"".join(p.payload for p in l16)
    return sox_decode(raw, "-t", "raw", "-e", "signed", "-b", "16", "-B", "-r", "16000", "-c", "2")


def reference_for(rate: int) -> np.ndarray:
    return reference_8k() if rate == 8000 else reference_16k()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def waveform_correlation(x: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Best normalised cross-correlation within ±max_lag samples, and its lag."""
    n = min(len(x), len(ref))
    a = np.asarray(x[:n], dtype=np.float64)
    b = np.asarray(ref[:n], dtype=np.float64)
    spectrum = np.fft.rfft(a, 2 * n) * np.conj(np.fft.rfft(b, 2 * n))
    circular = np.fft.irfft(spectrum)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([circular[: max_lag + 1], circular[-max_lag:]])
    lag = int(lags[np.argmax(values)])
    x_part, r_part = (a[lag:], b[: n - lag]) if lag >= 0 else (a[: n + lag], b[-lag:])
    corr = float(x_part @ r_part / np.sqrt((x_part @ x_part) * (r_part @ r_part)))
    return corr, lag


def band_log_energies(x: np.ndarray, rate: int) -> np.ndarray:
    """Log energy in 24 bands between 200 and 3600 Hz, 32 ms frames every 16 ms."""
    size, hop = int(rate * 0.032), int(rate * 0.016)
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float64), size)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(size), axis=1)) ** 2
    freqs = np.fft.rfftfreq(size, 1 / rate)
    edges = np.geomspace(200, 3600, 25)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in pairwise(edges)]
    return 10 * np.log10(np.stack(bands, axis=1) + 1e3)


def spectral_correlation(x: np.ndarray, x_rate: int, ref: np.ndarray, ref_rate: int) -> float:
    """How well the spectrogram of x follows the reference's (best over ±48 ms)."""
    a, b = band_log_energies(x, x_rate), band_log_energies(ref, ref_rate)
    best = -1.0
    for shift in range(-3, 4):
        aa, bb = a[max(shift, 0) :], b[max(-shift, 0) :]
        n = min(len(aa), len(bb))
        best = max(best, float(np.corrcoef(aa[:n].ravel(), bb[:n].ravel())[0, 1]))
    return best


def spectral_flatness(x: np.ndarray) -> float:
    """Mean spectral flatness of the louder half of 32 ms frames (noise ~0.5+, speech ~0.01)."""
    frames = np.asarray(x[: len(x) // 256 * 256], dtype=np.float64).reshape(-1, 256)
    loud = frames[frames.std(axis=1) > np.percentile(frames.std(axis=1), 50)]
    power = np.abs(np.fft.rfft(loud * np.hanning(256), axis=1)) ** 2 + 1e-9
    return float(np.mean(np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)))


def decode_stream(packets: tuple[RtpPacket, ...], spec: CodecSpec, out_rate: int) -> list[np.ndarray]:
    decoder = make_decoder(spec, out_rate)
    assert decoder.out_rate == out_rate
    return [decoder.decode(p.payload) for p in packets]


def assert_packet_durations(
    chunks: list[np.ndarray], packets: tuple[RtpPacket, ...], spec: CodecSpec, out_rate: int
) -> None:
    """Each packet yields its RTP duration of audio, and the total does not drift."""
    steps = [(b.timestamp - a.timestamp) % 2**32 for a, b in pairwise(packets)]
    for chunk, step in zip(chunks[:-1], steps, strict=True):
        assert chunk.dtype == np.int16 and chunk.ndim == 1
        assert abs(len(chunk) - step * out_rate / spec.clock_rate) <= 1
    total_expected = sum(steps) * out_rate / spec.clock_rate
    assert abs(sum(len(c) for c in chunks[:-1]) - total_expected) <= 1


# --------------------------------------------------------------------------------------
# G.711
# --------------------------------------------------------------------------------------


def test_g711_tables_equal_sox_for_every_code() -> None:
    codes = bytes(range(256))
    assert ULAW_TO_PCM16.dtype == np.int16 and ULAW_TO_PCM16.shape == (256,)
    assert ALAW_TO_PCM16.dtype == np.int16 and ALAW_TO_PCM16.shape == (256,)
    np.testing.assert_array_equal(ULAW_TO_PCM16, sox_decode(codes, "-t", "ul", "-r", "8000", "-c", "1"))
    np.testing.assert_array_equal(ALAW_TO_PCM16, sox_decode(codes, "-t", "al", "-r", "8000", "-c", "1"))
    assert (ULAW_TO_PCM16.min(), ULAW_TO_PCM16.max()) == (-32124, 32124)
    assert (ALAW_TO_PCM16.min(), ALAW_TO_PCM16.max()) == (-32256, 32256)


@pytest.mark.parametrize(("index", "encoding", "sox_type"), [(0, "PCMU", "ul"), (1, "PCMA", "al")])
def test_g711_corpus_decode_equals_sox(index: int, encoding: str, sox_type: str) -> None:
    packets = rtp_streams("g711_pcmu_pcma_sipp_fs.pcap")[index]
    spec = codec_spec(encoding, 8000)
    chunks = decode_stream(packets, spec, 8000)
    assert_packet_durations(chunks, packets, spec, 8000)
    expected = sox_decode(b"".join(p.payload for p in packets), "-t", sox_type, "-r", "8000", "-c", "1")
    np.testing.assert_array_equal(np.concatenate(chunks), expected)
    assert rms(expected) > 500  # the capture really is speech, not digital silence


def test_g711_at_16k_keeps_every_original_sample() -> None:
    packets = rtp_streams("g711_pcmu_pcma_sipp_fs.pcap")[0]
    spec = codec_spec("PCMU", 8000)
    chunks = decode_stream(packets, spec, 16000)
    assert_packet_durations(chunks, packets, spec, 16000)
    wide = np.concatenate(chunks)
    np.testing.assert_array_equal(wide[0::2], reference_8k())
    assert spectral_correlation(wide, 16000, reference_8k(), 8000) > 0.98


# --------------------------------------------------------------------------------------
# Every corpus codec: speech, right length, matching an independent reference
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusCase:
    file: str
    stream: int
    rtpmap: tuple[str, int, int]  # encoding, clock rate, channels as in the capture's SDP
    fmtp: str = ""
    min_waveform: float | None = None  # against the reference at the codec's own rate
    min_spectral: float = 0.9


CORPUS_CASES = [
    CorpusCase("g722_sipp_fs.pcap", 0, ("G722", 8000, 1), min_waveform=0.99),
    CorpusCase("g729a_sipp_fs.pcap", 0, ("G729", 8000, 1), "annexb=no"),
    CorpusCase("gsm_sipp_fs.pcap", 0, ("GSM", 8000, 1), min_waveform=0.95),
    CorpusCase("ilbc_sipp_fs.pcap", 0, ("iLBC", 8000, 1), "mode=30"),
    CorpusCase("opus_sipp_fs.pcap", 0, ("opus", 48000, 2), "useinbandfec=1; minptime=10; maxptime=40"),
    CorpusCase("speex_3rates_sipp_fs.pcap", 0, ("speex", 8000, 1)),
    CorpusCase("speex_3rates_sipp_fs.pcap", 1, ("speex", 16000, 1)),
    CorpusCase("speex_3rates_sipp_fs.pcap", 2, ("speex", 32000, 1)),
    CorpusCase("dvi4_2rates_sipp_fs.pcap", 0, ("DVI4", 8000, 1), min_waveform=0.99),
    CorpusCase("dvi4_2rates_sipp_fs.pcap", 1, ("DVI4", 16000, 1), min_waveform=0.99),
    CorpusCase("l16_4variants_sipp_fs.pcap", 0, ("L16", 8000, 2), min_waveform=0.999),
    CorpusCase("l16_4variants_sipp_fs.pcap", 2, ("L16", 11025, 1), min_waveform=0.98),
    CorpusCase("l16_4variants_sipp_fs.pcap", 3, ("L16", 48000, 1)),
    *[
        CorpusCase("g726_8variants_sipp_fs.pcap", i, (name, 8000, 1), min_waveform=0.98)
        for i, name in enumerate(
            [f"G726-{r}" for r in (16, 24, 32, 40)] + [f"AAL2-G726-{r}" for r in (16, 24, 32, 40)]
        )
    ],
]


@pytest.mark.parametrize("case", CORPUS_CASES, ids=lambda c: f"{c.rtpmap[0]}/{c.rtpmap[1]}")
def test_corpus_codec_decodes_to_the_announcement(case: CorpusCase) -> None:
    packets = rtp_streams(case.file)[case.stream]
    spec = codec_spec(*case.rtpmap, fmtp=case.fmtp)
    assert is_decodable_audio(spec)
    out_rate = wav_rate_for(spec)
    chunks = decode_stream(packets, spec, out_rate)
    assert_packet_durations(chunks, packets, spec, out_rate)
    audio = np.concatenate(chunks)
    reference = reference_for(out_rate)

    assert 0.5 < rms(audio) / rms(reference) < 2.0
    assert spectral_flatness(audio) < 0.06  # speech, not noise
    assert spectral_correlation(audio, out_rate, reference, out_rate) >= case.min_spectral
    if case.min_waveform is not None:
        correlation, lag = waveform_correlation(audio, reference, max_lag=out_rate // 100)
        assert correlation >= case.min_waveform, (correlation, lag)


def test_g722_lands_at_its_own_codec_delay_at_both_rates() -> None:
    """G.722's QMF filter bank delays by ~23 samples at 16 kHz; decoding to 8 kHz adds nothing."""
    packets = rtp_streams("g722_sipp_fs.pcap")[0]
    spec = codec_spec("G722", 8000)
    wide = np.concatenate(decode_stream(packets, spec, 16000))
    _, lag16 = waveform_correlation(wide, reference_16k(), max_lag=160)
    assert 20 <= lag16 <= 24  # 1.25-1.5 ms, intrinsic to G.722
    narrow = np.concatenate(decode_stream(packets, spec, 8000))
    # The same audio at 8 kHz lines up with the 16 kHz decode taken every other sample.
    corr, lag8 = waveform_correlation(narrow, upsample_free_decimate(wide), max_lag=40)
    assert corr > 0.99 and lag8 == 0


def upsample_free_decimate(x: np.ndarray) -> np.ndarray:
    """Ideal 2:1 decimation of a whole signal (FFT brick-wall at 3.8 kHz)."""
    spectrum = np.fft.rfft(np.asarray(x, dtype=np.float64))
    spectrum[np.fft.rfftfreq(len(x), 1 / 16000) > 3800] = 0
    return np.fft.irfft(spectrum, len(x))[::2]


@pytest.mark.parametrize("kbps", [16, 24, 32, 40])
def test_g726_bit_order_is_told_apart(kbps: int) -> None:
    """RFC 3551 packing and AAL2 packing: only the declared one gives clean speech."""
    names = {0: f"G726-{kbps}", 1: f"AAL2-G726-{kbps}"}
    index = {16: 0, 24: 1, 32: 2, 40: 3}[kbps]
    for offset, declared in names.items():
        swapped = names[1 - offset]
        packets = rtp_streams("g726_8variants_sipp_fs.pcap")[index + 4 * offset]
        right = np.concatenate(decode_stream(packets, codec_spec(declared, 8000), 8000))
        wrong = np.concatenate(decode_stream(packets, codec_spec(swapped, 8000), 8000))
        right_corr, _ = waveform_correlation(right, reference_8k(), 80)
        wrong_corr, _ = waveform_correlation(wrong, reference_8k(), 80)
        assert right_corr > 0.98 and wrong_corr < 0.8
        # Reference-free: the wrong order whitens the spectrum.
        assert spectral_flatness(right) < 0.05
        assert spectral_flatness(wrong) > 2 * spectral_flatness(right)


def test_ilbc_mode_follows_the_payload_length() -> None:
    """The 50-byte frames are 30 ms mode whatever fmtp says; 38-byte ones would be 20 ms."""
    packets = rtp_streams("ilbc_sipp_fs.pcap")[0]
    decoder = make_decoder(codec_spec("iLBC", 8000, fmtp="mode=20"), 8000)
    chunks = [decoder.decode(p.payload) for p in packets]
    assert {len(c) for c in chunks} == {240}
    two_frames = decoder.decode(packets[10].payload + packets[11].payload)
    assert len(two_frames) == 480
    with pytest.raises(ParseError) as error:
        decoder.decode(packets[10].payload[:-1])
    assert error.value.reason == "ilbc.bad_length"


def test_opus_multiframe_and_malformed_packets() -> None:
    """The hybrid excerpt: 1- and 2-frame packets decode; its code-3 packets violate RFC 6716."""
    packets = rtp_streams("opus_hybrid_excerpt.pcap")[0]
    decoder = make_decoder(codec_spec("opus", 48000, 2), 16000)
    assert [len(decoder.decode(p.payload)) for p in packets[:3]] == [320, 640, 640]
    for packet in packets[3:]:
        assert packet.payload[0] & 0x03 == 3  # code 3: frame count byte follows
        with pytest.raises(ParseError) as error:
            decoder.decode(packet.payload)
        assert error.value.reason == "codec.decode_failed"


def test_decoder_reset_restarts_from_a_clean_state() -> None:
    packets = rtp_streams("g726_8variants_sipp_fs.pcap")[2]
    decoder = make_decoder(codec_spec("G726-32", 8000), 16000)
    first = decoder.decode(packets[100].payload)
    decoder.decode(packets[101].payload)
    decoder.reset()
    np.testing.assert_array_equal(decoder.decode(packets[100].payload), first)


# --------------------------------------------------------------------------------------
# Timing: no added latency (tone onsets)
# --------------------------------------------------------------------------------------

TONE_HZ = 1000.0
ONSET_S = 0.3137  # deliberately mid-packet


def tone(rate: int, seconds: float = 0.6, amplitude: float = 12000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.where(t >= ONSET_S, amplitude * np.sin(2 * np.pi * TONE_HZ * (t - ONSET_S)), 0.0)


def onset_seconds(x: np.ndarray, rate: int, amplitude: float = 12000.0) -> float:
    return float(np.argmax(np.abs(x) > 0.3 * amplitude)) / rate


def packetise(samples: bytes, packet_bytes: int) -> list[bytes]:
    return [samples[i : i + packet_bytes] for i in range(0, len(samples), packet_bytes)]


def l16_payloads(rate: int, ptime_ms: int = 20) -> list[bytes]:
    pcm = np.rint(tone(rate)).astype(">i2").tobytes()
    return packetise(pcm, 2 * (rate * ptime_ms // 1000))


def pcmu_payloads() -> list[bytes]:
    linear = np.rint(tone(8000)).astype("<i2").tobytes()
    result = subprocess.run(
        ["sox", "-t", "raw", "-e", "signed", "-b", "16", "-L", "-r", "8000", "-c", "1", "-",
         "-t", "ul", "-"],
        input=linear, capture_output=True, check=True,
    )  # fmt: skip
    return packetise(result.stdout, 160)


ONSET_CASES = [
    ("PCMU", 8000, 8000, pcmu_payloads),
    ("PCMU", 8000, 16000, pcmu_payloads),
    ("L16", 48000, 16000, lambda: l16_payloads(48000)),
    ("L16", 48000, 8000, lambda: l16_payloads(48000)),
    ("L16", 32000, 16000, lambda: l16_payloads(32000)),
    ("L16", 16000, 8000, lambda: l16_payloads(16000)),
    ("L16", 11025, 16000, lambda: l16_payloads(11025, ptime_ms=32)),
    ("L16", 44100, 16000, lambda: l16_payloads(44100)),
    ("L16", 8000, 16000, lambda: l16_payloads(8000)),
]


@pytest.mark.parametrize(("encoding", "clock", "out_rate", "payloads"), ONSET_CASES)
def test_tone_onset_lands_within_1ms(encoding: str, clock: int, out_rate: int, payloads) -> None:
    decoder = make_decoder(codec_spec(encoding, clock), out_rate)
    chunks = [decoder.decode(p) for p in payloads()]
    audio = np.concatenate(chunks)
    assert abs(len(audio) - 0.6 * out_rate) <= 1  # no drift over the whole signal
    assert abs(onset_seconds(audio, out_rate) - onset_seconds(tone(out_rate), out_rate)) <= 0.001
    # And the whole tone is right, not just its start. The mirrored right edge of each
    # packet costs some accuracy (worst here: ~34 dB at 11025 Hz); being one output sample
    # late would cost far more (~8 dB for a 1 kHz tone at 16 kHz).
    ideal = tone(out_rate)[: len(audio)]
    steady = slice(int((ONSET_S + 0.01) * out_rate), len(audio) - out_rate // 100)
    error = audio[steady] - ideal[steady]
    assert 10 * np.log10(np.sum(ideal[steady] ** 2) / np.sum(error**2)) > 30


def test_upsample_2x_keeps_samples_and_interpolates() -> None:
    narrow = np.rint(tone(8000)).astype(np.int16)
    wide = np.concatenate([upsample_2x(narrow[i : i + 160]) for i in range(0, len(narrow), 160)])
    assert wide.dtype == np.int16 and len(wide) == 2 * len(narrow)
    np.testing.assert_array_equal(wide[0::2], narrow)  # zero latency: originals stay in place
    ideal = tone(16000)
    steady = slice(int((ONSET_S + 0.01) * 16000), None)
    error = wide[steady] - ideal[steady]
    assert 10 * np.log10(np.sum(ideal[steady] ** 2) / np.sum(error**2)) > 35
    np.testing.assert_array_equal(upsample_2x(narrow[:160]), upsample_2x(narrow[:160]))  # stateless
    assert len(upsample_2x(np.zeros(0, np.int16))) == 0
    np.testing.assert_array_equal(upsample_2x(np.array([1000], np.int16)), [1000, 1000])


# --------------------------------------------------------------------------------------
# Payload formats without corpus captures: G.729B SID, CN, AMR, G.723.1
# --------------------------------------------------------------------------------------


def test_g729_sid_frames_become_hinted_silence() -> None:
    voice = rtp_streams("g729a_sipp_fs.pcap")[0][100].payload  # two 10-byte frames
    decoder = make_decoder(codec_spec("G729", 8000, fmtp="annexb=yes"), 8000)
    with_sid = decoder.decode(voice + b"\x12\x34", samples_hint=240)
    assert len(with_sid) == 240 and rms(with_sid[:160]) > 0 and not with_sid[160:].any()
    assert len(decoder.decode(b"\x12\x34", samples_hint=800)) == 800
    assert len(decoder.decode(b"\x12\x34")) == 80  # one frame when the gap is unknown
    with pytest.raises(ParseError) as error:
        decoder.decode(voice[:7])
    assert error.value.reason == "g729.bad_length"


@pytest.mark.parametrize("out_rate", [8000, 16000])
def test_comfort_noise_is_silence_of_the_hinted_length(out_rate: int) -> None:
    decoder = make_decoder(codec_spec("CN", 8000), out_rate)
    silence = decoder.decode(b"\x40", samples_hint=480)
    assert len(silence) == 480 * out_rate // 8000 and not silence.any()
    assert len(decoder.decode(b"\x40")) == 0


@functools.cache
def amr_storage_frames() -> tuple[bytes, ...]:
    """The 8 kHz reference encoded by sox (opencore-amrnb), split into storage-format frames."""
    pcm = reference_8k().astype("<i2").tobytes()
    encoded = subprocess.run(
        ["sox", "-t", "raw", "-e", "signed", "-b", "16", "-L", "-r", "8000", "-c", "1", "-",
         "-t", "amr-nb", "-C", "7", "-"],
        input=pcm, capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert encoded.startswith(b"#!AMR\n")
    sizes = (12, 13, 15, 17, 19, 20, 26, 31, 5)  # octets per frame type (RFC 4867 §5.3)
    frames, pos = [], 6
    while pos < len(encoded):
        frame_type = (encoded[pos] >> 3) & 0x0F
        size = sizes[frame_type] if frame_type < len(sizes) else 0
        frames.append(encoded[pos : pos + 1 + size])
        pos += 1 + size
    return tuple(frames)


AMR_NB_BITS = (95, 103, 118, 134, 148, 159, 204, 244, 39)


def amr_rtp_payload(frames: list[bytes], octet_aligned: bool) -> bytes:
    """Pack storage-format frames into one RFC 4867 payload (CMR 15 = no request)."""
    tocs = [(i < len(frames) - 1, f[0] >> 3 & 0x0F, f[0] >> 2 & 1) for i, f in enumerate(frames)]
    if octet_aligned:
        header = bytes([0xF0]) + bytes((follow << 7) | (ft << 3) | (q << 2) for follow, ft, q in tocs)
        return header + b"".join(f[1:] for f in frames)
    bits = [1, 1, 1, 1]
    for follow, ft, q in tocs:
        bits += [int(follow), *((ft >> s) & 1 for s in (3, 2, 1, 0)), q]
    for frame, (_, ft, _) in zip(frames, tocs, strict=True):
        speech_bits = AMR_NB_BITS[ft] if ft < len(AMR_NB_BITS) else 0
        bits += np.unpackbits(np.frombuffer(frame[1:], np.uint8))[:speech_bits].tolist()
    return np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


@pytest.mark.parametrize("octet_aligned", [True, False], ids=["octet-aligned", "bandwidth-efficient"])
@pytest.mark.parametrize("frames_per_packet", [1, 2])
def test_amr_payloads_decode_like_sox(octet_aligned: bool, frames_per_packet: int) -> None:
    frames = list(amr_storage_frames())
    fmtp = "octet-align=1" if octet_aligned else ""
    decoder = make_decoder(codec_spec("AMR", 8000, fmtp=fmtp), 8000)
    chunks = [
        decoder.decode(amr_rtp_payload(frames[i : i + frames_per_packet], octet_aligned))
        for i in range(0, len(frames), frames_per_packet)
    ]
    assert all(len(c) == 160 * frames_per_packet for c in chunks[:-1])
    ours = np.concatenate(chunks)
    sox_amr = sox_decode(b"#!AMR\n" + b"".join(frames), "-t", "amr-nb")
    correlation, lag = waveform_correlation(ours, sox_amr, 80)
    assert correlation > 0.95 and lag == 0
    assert spectral_correlation(ours, 8000, reference_8k(), 8000) > 0.9


def test_amr_wb_repacking_and_no_data_frames() -> None:
    """No AMR-WB encoder here: check both payload formats give the same 320-sample frames."""
    rng = np.random.default_rng(7)
    speech = np.packbits(rng.integers(0, 2, 477, dtype=np.uint8)).tobytes()  # mode 8, 477 bits
    octet = bytes([0xF0, (8 << 3) | 4]) + speech
    bits = [1, 1, 1, 1, 0, 1, 0, 0, 0, 1] + np.unpackbits(np.frombuffer(speech, np.uint8))[:477].tolist()
    efficient = np.packbits(np.array(bits, dtype=np.uint8)).tobytes()
    spec_octet = codec_spec("AMR-WB", 16000, fmtp="octet-align=1")
    spec_efficient = codec_spec("AMR-WB", 16000)
    assert audio_rate(spec_octet) == 16000 and wav_rate_for(spec_octet) == 16000
    a = make_decoder(spec_octet, 16000).decode(octet)
    b = make_decoder(spec_efficient, 16000).decode(efficient)
    assert len(a) == 320 and rms(a) > 0
    np.testing.assert_array_equal(a, b)
    no_data = make_decoder(spec_octet, 16000).decode(bytes([0xF0, 15 << 3 | 4]))
    assert len(no_data) == 320 and not no_data.any()
    with pytest.raises(ParseError) as error:
        make_decoder(spec_octet, 16000).decode(octet[:20])
    assert error.value.reason == "amr.truncated"


def test_g723_frames_decode() -> None:
    """G.723.1 through FFmpeg's own encoder (plumbing check: 30 ms per 24-byte frame)."""
    import av

    encoder = av.CodecContext.create("g723_1", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 8000, "mono", "s16", 6300
    pcm = reference_8k()[: 8000 * 2]
    packets = []
    for i in range(0, len(pcm) - 239, 240):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + 240].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, i
        packets += [bytes(p) for p in encoder.encode(frame)]
    decoder = make_decoder(codec_spec("G723", 8000), 8000)
    chunks = [decoder.decode(p) for p in packets]
    assert {len(p) for p in packets} == {24} and {len(c) for c in chunks} == {240}
    assert spectral_correlation(np.concatenate(chunks), 8000, pcm, 8000) > 0.8


# --------------------------------------------------------------------------------------
# Names, rates, unsupported formats and corrupt payloads
# --------------------------------------------------------------------------------------


def test_codec_spec_canonical_names_and_rates() -> None:
    assert codec_spec("PCMU", 8000) == CodecSpec("pcmu", 8000)
    assert codec_spec("G729a", 8000).name == "g729"
    assert codec_spec("G721", 8000).name == "g726-32"
    assert codec_spec("AAL2-G726-32", 8000).name == "aal2-g726-32"
    assert codec_spec("telephone-EVENT", 8000).name == "telephone-event"
    assert codec_spec("X-Vendor", 8000).name == "x-vendor"
    assert codec_spec("opus", 48000, 2, " useinbandfec=1 ").fmtp == "useinbandfec=1"
    rates = {
        ("G722", 8000): (16000, 16000),
        ("opus", 48000): (48000, 16000),
        ("PCMA", 8000): (8000, 8000),
        ("speex", 32000): (32000, 16000),
        ("L16", 44100): (44100, 16000),
        ("AMR", 8000): (8000, 8000),
        ("G726-40", 8000): (8000, 8000),
        ("DVI4", 16000): (16000, 16000),
    }
    for (encoding, clock), expected in rates.items():
        spec = codec_spec(encoding, clock)
        assert (audio_rate(spec), wav_rate_for(spec)) == expected, encoding
    with pytest.raises(ParseError):
        codec_spec("PCMU", 0)


@pytest.mark.parametrize(
    ("encoding", "clock", "reason"),
    [("telephone-event", 8000, "codec.not_audio"), ("H264", 90000, "codec.unsupported"),
     ("G7221", 16000, "codec.unsupported"), ("speex", 11025, "codec.bad_rate")],
)  # fmt: skip
def test_unsupported_codecs_are_refused(encoding: str, clock: int, reason: str) -> None:
    spec = codec_spec(encoding, clock)
    assert not is_decodable_audio(spec)
    with pytest.raises(UnsupportedCodec) as error:
        make_decoder(spec, 8000)
    assert error.value.reason == reason
    assert isinstance(error.value, ParseError)


@pytest.mark.parametrize(
    ("encoding", "clock", "payload", "reason"),
    [
        ("GSM", 8000, b"\xd0" * 32, "gsm.bad_length"),
        ("GSM", 8000, b"\x20" * 33, "gsm.bad_signature"),
        ("L16", 16000, b"\x00" * 3, "l16.bad_length"),
        ("DVI4", 8000, b"\x00\x00", "dvi4.truncated"),
        ("DVI4", 8000, b"\x00\x00\x59\x00\x12", "dvi4.bad_step_index"),
        ("opus", 48000, b"", "opus.empty"),
        ("AMR", 8000, b"\xf0", "amr.truncated"),
        ("AMR", 8000, b"\xf0\x3c\x00", "amr.truncated"),
    ],
)
def test_corrupt_payloads_raise_parse_error(encoding: str, clock: int, payload: bytes, reason: str) -> None:
    fmtp = "octet-align=1" if encoding == "AMR" else ""
    decoder = make_decoder(codec_spec(encoding, clock, fmtp=fmtp), 8000)
    with pytest.raises(ParseError) as error:
        decoder.decode(payload)
    assert error.value.reason == reason


FUZZ_SPECS = [
    ("PCMU", 8000, 1, ""), ("G722", 8000, 1, ""), ("G729", 8000, 1, ""), ("GSM", 8000, 1, ""),
    ("iLBC", 8000, 1, ""), ("opus", 48000, 2, ""), ("speex", 16000, 1, ""), ("G726-24", 8000, 1, ""),
    ("AAL2-G726-40", 8000, 1, ""), ("L16", 8000, 2, ""), ("DVI4", 16000, 1, ""), ("AMR", 8000, 1, ""),
    ("AMR", 8000, 1, "octet-align=1"), ("AMR-WB", 16000, 1, ""), ("G723", 8000, 1, ""), ("CN", 8000, 1, ""),
]  # fmt: skip


@pytest.mark.parametrize("spec_args", FUZZ_SPECS, ids=lambda a: a[0] + (" " + a[3] if a[3] else ""))
def test_random_payloads_never_escape_as_other_errors(spec_args: tuple[str, int, int, str]) -> None:
    encoding, clock, channels, fmtp = spec_args
    rng = np.random.default_rng(1234)
    decoder = make_decoder(codec_spec(encoding, clock, channels, fmtp), 16000)
    for _ in range(150):
        payload = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        try:
            out = decoder.decode(payload, samples_hint=int(rng.integers(0, 2000)))
        except ParseError:
            decoder.reset()
            continue
        assert out.dtype == np.int16 and out.ndim == 1
