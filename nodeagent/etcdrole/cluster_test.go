package etcdrole_test

import (
	"context"
	"testing"
	"time"

	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/etcdrole/etcdtest"
)

func TestThreeMembersFormAClusterAndReplicate(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	leaders := map[uint64]bool{}
	for _, m := range c.Members {
		st := etcdrole.Probe(ctx, m.Root, m.Plan)
		if !st.Healthy || st.Error != "" {
			t.Fatalf("probe of %s: healthy=%v error=%q", m.Name, st.Healthy, st.Error)
		}
		if st.LeaderId == 0 || st.MemberId == 0 || st.RaftTerm == 0 || st.DbSizeBytes == 0 {
			t.Errorf("probe of %s is missing facts: %+v", m.Name, st)
		}
		leaders[st.LeaderId] = true
	}
	if len(leaders) != 1 {
		t.Errorf("members disagree on the leader: %v", leaders)
	}

	if _, err := c.Client(c.Endpoints[0]).Put(ctx, "/kedge/test", "written-through-0"); err != nil {
		t.Fatalf("put through member 0: %v", err)
	}
	resp, err := c.Client(c.Endpoints[2]).Get(ctx, "/kedge/test")
	if err != nil {
		t.Fatalf("get through member 2: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "written-through-0" {
		t.Errorf("member 2 read %v, want written-through-0", resp.Kvs)
	}
}
