package server

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func timestamppbOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// secretFields are never shown in a diff, only that they changed.
var secretFields = map[string]bool{"token": true, "agent_token": true}

// diffPlans lists changed fields, one line each ("k3s.server_url: a -> b"),
// ignoring revision and hash.
func diffPlans(old, cur *kedgev1.Plan) []string {
	if old == nil {
		old = &kedgev1.Plan{}
	}
	var lines []string
	diffMsg("", old.ProtoReflect(), cur.ProtoReflect(), &lines)
	return lines
}

func diffMsg(prefix string, a, b protoreflect.Message, lines *[]string) {
	fields := b.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := string(fd.Name())
		if prefix == "" && (name == "revision" || name == "hash") {
			continue
		}
		av, bv := a.Get(fd), b.Get(fd)
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && fd.Message().FullName() != "google.protobuf.Struct" {
			if a.Has(fd) || b.Has(fd) {
				diffMsg(prefix+name+".", av.Message(), bv.Message(), lines)
			}
			continue
		}
		if equalValue(fd, a, b) {
			continue
		}
		if secretFields[name] {
			*lines = append(*lines, prefix+name+": changed")
			continue
		}
		*lines = append(*lines, fmt.Sprintf("%s%s: %s -> %s", prefix, name, show(fd, a), show(fd, b)))
	}
}

func equalValue(fd protoreflect.FieldDescriptor, a, b protoreflect.Message) bool {
	// Compare via single-field messages: proto.Equal handles lists, maps, structs.
	x, y := a.New(), b.New()
	if a.Has(fd) {
		x.Set(fd, a.Get(fd))
	}
	if b.Has(fd) {
		y.Set(fd, b.Get(fd))
	}
	return proto.Equal(x.Interface(), y.Interface())
}

func show(fd protoreflect.FieldDescriptor, m protoreflect.Message) string {
	if !m.Has(fd) {
		return "(none)"
	}
	v := m.Get(fd)
	switch {
	case fd.IsList():
		l := v.List()
		out := "["
		for i := 0; i < l.Len(); i++ {
			if i > 0 {
				out += " "
			}
			out += showScalar(fd, l.Get(i))
		}
		return out + "]"
	case fd.IsMap() || fd.Kind() == protoreflect.MessageKind:
		return "{...}"
	}
	return showScalar(fd, v)
}

func showScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
	case protoreflect.StringKind:
		return fmt.Sprintf("%q", v.String())
	case protoreflect.MessageKind:
		return "{...}"
	}
	return v.String()
}
