package dtx

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
)

// The FileLog's record codec. A log file is a magic line followed by
// records:
//
//	| length u32 BE | CRC-32C of the 4 length bytes | CRC-32C of the payload | payload |
//
// payload = one type byte ('D' decision, 'A' abort, 'F' forget, 'H'
// heuristic) followed by JSON. The length has a checksum of its own so that
// a damaged length is seen as corruption: without it a flipped bit in a
// length makes the rest of the file read as a record running past the end,
// which looks exactly like a torn tail and would be cut off silently.
//
// The first format (DTXLOG1, | length | CRC-32C of payload | payload |) is
// still read, and rewritten in the current one when a log opens for writing.
const (
	fileLogMagic   = "DTXLOG2\n"
	fileLogMagicV1 = "DTXLOG1\n"
	recordHeader   = 12
	recordHeaderV1 = 8
	maxRecordSize  = 1 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errBadRecord is wrapped by scanRecords for bytes that are not a record.
var errBadRecord = errors.New("bad record")

// record encodes one record in the current format.
func record(typ byte, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	rec := make([]byte, recordHeader+1, recordHeader+1+len(body))
	rec[recordHeader] = typ
	rec = append(rec, body...)
	if len(rec)-recordHeader > maxRecordSize {
		// Refused here, or the log would not open again.
		return nil, fmt.Errorf("record of %d bytes, more than the %d a log record may have", len(rec)-recordHeader, maxRecordSize)
	}
	binary.BigEndian.PutUint32(rec, uint32(len(rec)-recordHeader))
	binary.BigEndian.PutUint32(rec[4:], crc32.Checksum(rec[:4], crcTable))
	binary.BigEndian.PutUint32(rec[8:], crc32.Checksum(rec[recordHeader:], crcTable))
	return rec, nil
}

// scanRecords calls fn with the payload of each record of data,
// a whole log file whose magic (of format v1 or the current one) has been
// checked. It returns where the valid records end: len(data), or the start
// of a torn tail that may be cut off.
//
// A torn tail is what a crash in the middle of appending the last batch
// leaves under a prefix model, where a write reaches the disk as a prefix of
// itself, perhaps padded with zeros when the file's size got there first:
// a header shorter than a header, a record running past the end of the
// file, or a record in which the zeros that run to the end of the file
// begin. Anything else that is not a valid record — a bad checksum with a
// non-zero byte after the record, a bad header checksum, an impossible
// length — is ErrLogCorrupt: it could be an acknowledged record, and a
// valid record after it proves that the tail was not being written.
func scanRecords(data []byte, v1 bool, fn func(payload []byte) error) (int, error) {
	hdr := recordHeader
	if v1 {
		hdr = recordHeaderV1
	}
	zeros := len(bytes.TrimRight(data, "\x00")) // the zero tail starts here
	off := len(fileLogMagic)
	for off < len(data) {
		if off >= zeros || len(data)-off < hdr {
			return off, nil
		}
		h := data[off : off+hdr]
		n := int(binary.BigEndian.Uint32(h))
		var sum uint32
		if v1 {
			sum = binary.BigEndian.Uint32(h[4:])
		} else {
			sum = binary.BigEndian.Uint32(h[8:])
			if crc32.Checksum(h[:4], crcTable) != binary.BigEndian.Uint32(h[4:]) {
				if zeros < off+hdr {
					return off, nil // the header was being written
				}
				return 0, fmt.Errorf("%w at byte %d: header checksum", errBadRecord, off)
			}
		}
		if n == 0 || n > maxRecordSize {
			if v1 && (zeros < off+hdr || off+hdr+n > len(data)) {
				return off, nil // a v1 length has no checksum: treat it as torn, as v1 did
			}
			return 0, fmt.Errorf("%w at byte %d: length %d", errBadRecord, off, n)
		}
		end := off + hdr + n
		if end > len(data) {
			return off, nil // the record runs past the end of the file
		}
		payload := data[off+hdr : end]
		if crc32.Checksum(payload, crcTable) != sum {
			if zeros < end {
				return off, nil // the zeros of the tail begin inside this record
			}
			return 0, fmt.Errorf("%w at byte %d: payload checksum", errBadRecord, off)
		}
		if err := fn(payload); err != nil {
			return 0, fmt.Errorf("%w at byte %d: %v", errBadRecord, off, err)
		}
		off = end
	}
	return off, nil
}
